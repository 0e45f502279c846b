"""A network partition mid-reply, over real networking: run inside a private network
namespace (``unshare --net``), where loopback is the only link and nftables can cut it.

``python -m tests.e2e.partition_scenario`` prints one JSON object with what happened; the
test in ``test_partition.py`` runs it and asserts. It is a separate process because it
takes the whole namespace's network down for a while.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance import machine as m
from appliance_common.ice import allow_loopback
from standin import StandIn, StandInConfig
from tests.e2e.harness import device
from tests.standin.conftest import API_KEY
from tests.waiting import HANG_S


def nft(*script: str) -> None:
    subprocess.run(["nft", *script], check=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def scenario(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"fds_before": open_fds()}
    standin = StandIn(StandInConfig(api_key=API_KEY))
    async with standin, device(standin, tmp, liveness_s=3.0, connect_s=3.0) as dev:
        await dev.push_to_talk()
        await dev.wait(m.State.SPEAKING)
        out["fds_in_call"] = open_fds()
        await dev.source.until_read(dev.source.frames_read + 25)  # half a second into it
        cut = time.monotonic()
        nft("add", "table", "inet", "partition")
        nft("add chain inet partition out { type filter hook output priority 0; policy drop; }")
        offline_at = await dev.wait(m.State.OFFLINE, 40)
        out["detected_s"] = offline_at - cut
        out["reason"] = dev.app.last_error
        out["status"] = dev.app.status_text()
        # the device keeps trying during the outage; each attempt ends at its deadline
        tried = dev.keys.minted
        await dev.keys.asked.until(lambda: dev.keys.minted >= tried + 2, "two attempts", 60)
        out["attempts_during_outage"] = dev.keys.minted - 1
        nft("delete", "table", "inet", "partition")
        healed = time.monotonic()
        at_heal = dev.keys.minted
        await dev.wait(m.State.CONNECTING, 70)
        await dev.wait(m.State.IDLE, 20)
        out["recovered_s"] = time.monotonic() - healed  # reported; `make bench` times things
        out["attempts_to_heal"] = dev.keys.minted - at_heal
        out["session_open"] = dev.app.snapshot.session_open
        await dev.wait(m.State.SPEAKING, 10)  # the "connection is back" announcement
        await dev.wait(m.State.IDLE, 20)
        out["states"] = [s.name for s in dev.states()]
        out["transcripts"] = dev.app.stats.transcripts
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:  # closing tasks end by themselves; a leaked one is still running after this
        await asyncio.wait(others, timeout=HANG_S)
    out["tasks_left"] = sorted(t.get_name() for t in others if not t.done())
    out["fds_after"] = open_fds()
    return out


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    allow_loopback()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(scenario(Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

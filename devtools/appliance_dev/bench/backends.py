"""Realtime and GPT-Live side by side: connect time, what the relay adds, per-turn latency,
standby billing.

- **turns**: ``make demo`` on each backend (stand-in, provisioning server, daemon on fake
  hardware, loopback WebRTC), ``RUNS`` times: cold connect as the user waits for it (CONNECTING
  → LISTENING; Realtime: key fetch + call + session configured; Live: the mint's 409 that moves
  the device, relay, session.started) and, per turn, the end of the user's audio (button
  release; the clip's end hands-free) to the first reply audio.
- **relay**: the same SDP offer posted ``RELAY_RUNS`` times through the provisioning server's
  relay (device JWT, ledger, upstream call) and straight to the stand-in with the project key;
  the difference is what the relay adds to connect time.
- **standby**: a stand-in Live session with a speech wake policy and ``idle_timeout_s=1`` held
  idle for ``IDLE_S``: how its time splits into active and paused (standby) seconds.

The stand-in is not the service: its turn-taking is a VAD with a fixed 500 ms end of turn and
its "model" answers at once, so these figures compare the device and server paths, not
OpenAI's models.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from appliance.identity import enroll
from appliance.realtime.provisioning_keys import ProvisioningKeySource

RUNS = 2
RELAY_RUNS = 20
IDLE_S = 6.0
KEY = "sk-standin-bench-live"


def _med(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values) * 1000:.0f} ms (n={len(values)}, " + (
        f"min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})"
    )


async def _turns(backend: str) -> tuple[list[float], list[float], list[float]]:
    from appliance_dev.demo import run_demo

    connects: list[float] = []
    ptt: list[float] = []
    hands_free: list[float] = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="bench-backends-") as work:
            report = await run_demo(Path(work) / "out", Path(work), quiet=True, backend=backend)
        if not report.ok or len(report.turn_s) < 2:
            raise RuntimeError(f"the {backend} demo failed")
        connects.append(report.connect_s)
        ptt.append(report.turn_s[0])
        hands_free.append(report.turn_s[1])
    return connects, ptt, hands_free


async def _offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, str(pc.localDescription.sdp)


async def _relay() -> tuple[list[float], list[float]]:
    from provisioning.live_relay import live_profile
    from provisioning.server import ProvisioningServer, Settings
    from standin import StandIn, StandInConfig

    via_relay: list[float] = []
    direct: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as work:
        async with StandIn(StandInConfig(api_key=KEY)) as standin:
            settings = Settings(
                database_url=f"sqlite:///{Path(work) / 'p.db'}",
                upstream_url=standin.base_url,
                openai_api_key=KEY,
                port=0,
            )
            async with ProvisioningServer(settings) as server:
                server.store.ensure_group("default", live_profile("gpt-live-1"))
                token = server.store.create_token("default", max_uses=1)
                identity = await enroll(server.base_url, token, Path(work) / "dev", "bench")
                relay = ProvisioningKeySource(identity)  # a new connection per request
                for _ in range(RELAY_RUNS):
                    pc, sdp = await _offer()
                    started = time.perf_counter()
                    await relay.open_live(sdp, [])
                    via_relay.append(time.perf_counter() - started)
                    await pc.close()
                    pc, sdp = await _offer()
                    started = time.perf_counter()
                    async with httpx.AsyncClient() as http:  # likewise
                        response = await http.post(
                            f"{standin.base_url}/v1/live/sessions",
                            headers={"Authorization": f"Bearer {KEY}"},
                            json={
                                "session": {"model": "gpt-live-1"},
                                "transport": {"type": "webrtc", "sdp": sdp},
                            },
                        )
                    response.raise_for_status()
                    direct.append(time.perf_counter() - started)
                    await pc.close()
                    await standin.live.close_all()
    return via_relay, direct


async def _standby() -> dict[str, float]:
    from standin import StandIn, StandInConfig

    async with StandIn(StandInConfig(api_key=KEY)) as standin, httpx.AsyncClient() as http:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendrecv")
        channel = pc.createDataChannel("oai-events")
        started = asyncio.Event()
        channel.on("message", lambda message: started.set())
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        config = {"model": "gpt-live-1", "wake_policy": {"type": "speech"}, "idle_timeout_s": 1}
        response = await http.post(
            f"{standin.base_url}/v1/live/sessions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"session": config, "transport": {"type": "webrtc", "sdp": sdp}},
        )
        response.raise_for_status()
        created = response.json()
        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=created["transport"]["sdp"], type="answer")
        )
        await asyncio.wait_for(started.wait(), 10)  # session.started
        session = standin.live.open[created["session"]["id"]]
        await asyncio.sleep(IDLE_S)  # the measured interval itself: idle time is the point
        usage = session.usage()
        await pc.close()
    return {k: float(v) for k, v in usage.items()}


async def _run() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    results = {backend: await _turns(backend) for backend in ("realtime", "live")}
    for label, index in (
        ("cold connect", 0),
        ("turn latency, push-to-talk", 1),
        ("turn latency, hands-free", 2),
    ):
        for backend in ("realtime", "live"):
            rows.append((f"{label} ({backend})", _med(results[backend][index])))
    via_relay, direct = await _relay()
    rows.append(("Live create via relay (device → server → stand-in)", _med(via_relay)))
    rows.append(("Live create direct (project key → stand-in)", _med(direct)))
    added = statistics.median(via_relay) - statistics.median(direct)
    rows.append(("added by the relay (median difference)", f"{added * 1000:.0f} ms"))
    usage = await _standby()
    rows.append(
        (
            f"standby: {IDLE_S:g} s idle, idle_timeout_s=1",
            f"{usage['active_seconds']:.0f} s active, {usage['paused_seconds']:.0f} s paused "
            f"(billed at the standby rate)",
        )
    )
    return rows


def run() -> list[tuple[str, str]]:
    return asyncio.run(_run())

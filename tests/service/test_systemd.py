"""systemd: notify protocol on a fake NOTIFY_SOCKET, the watchdog, the units' hardening."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.identity import enroll
from appliance.service import Notifier, watchdog_loop
from provisioning.server import ProvisioningServer
from tests.conftest import require_tool
from tests.waiting import HANG_S, LogWatch

UNITS = Path(__file__).parents[2] / "systemd"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_outside_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("idle")
    notifier.watchdog()
    assert notifier.watchdog_s is None


def test_ready_status_and_stopping(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    notifier.ready("idle, press the button to talk")
    notifier.status("in conversation (listening)")
    notifier.status("in conversation (listening)")  # unchanged: not re-sent
    notifier.stopping()
    assert drain(notify_socket) == [
        "READY=1\nSTATUS=idle, press the button to talk",
        "STATUS=in conversation (listening)",
        "STOPPING=1\nSTATUS=stopping",
    ]


async def test_watchdog_is_fed_only_while_audio_flows(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, logwatch: LogWatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notifier = Notifier()
    assert notifier.watchdog_s == pytest.approx(0.2)
    flowing = True  # while it flows, the mic has just delivered a frame

    def last_audio() -> float:
        return time.monotonic() if flowing else 0.0

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(watchdog_loop(notifier, last_audio, 0.15))
    fed = [
        (await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), HANG_S)).decode()
        for _ in range(4)
    ]
    assert fed == ["WATCHDOG=1"] * 4
    flowing = False  # the capture stream dies
    await logwatch.wait_for("no audio for")  # the first check after it died
    drain(notify_socket)  # fed before that check
    await logwatch.wait_for("no audio for", count=3)  # two more checks have passed
    assert drain(notify_socket) == [], "a deaf daemon must not feed the watchdog"
    task.cancel()


@pytest.mark.slow  # the daemon in a subprocess
async def test_daemon_notifies_ready_and_stops_cleanly_on_sigterm(
    tmp_path: Path, server: ProvisioningServer
) -> None:
    token = server.store.create_token("default")
    state = tmp_path / "state"
    await enroll(server.base_url, token, state, "svc")
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[device]\nstate_dir = "{state}"\nboard = "mock"\n[audio]\nbackend = "wav"\n'
    )
    sock_path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(sock_path),
        "WATCHDOG_USEC": "1000000",
        "GPIOZERO_PIN_FACTORY": "mock",
        "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "run",
        "--config",
        str(config),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    messages: list[str] = []
    try:
        while not any(m.startswith("READY=1") for m in messages):
            messages.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)).decode())
        assert "STATUS=idle" in next(m for m in messages if m.startswith("READY=1"))
        while "WATCHDOG=1" not in messages:  # fed at half the interval once audio flows
            messages.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)).decode())
        proc.send_signal(signal.SIGTERM)
        # a clean exit (not systemd's kill after TimeoutStopSec); the bound is only for a hang
        assert await asyncio.wait_for(proc.wait(), HANG_S) == 0
        assert any(m.startswith("STOPPING=1") for m in drain(sock))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()


def _rewritten(unit: Path, tmp_path: Path) -> Path:
    """The unit with /opt/appliance pointing at a fake install, so verify can check ExecStart."""
    fake = tmp_path / "opt" / "appliance" / "venv" / "bin"
    fake.mkdir(parents=True, exist_ok=True)
    for exe in ("appliance", "provisioning"):
        (fake / exe).write_text("#!/bin/sh\n")
        (fake / exe).chmod(0o755)
    out = tmp_path / unit.name
    out.write_text(unit.read_text().replace("/opt/appliance", str(tmp_path / "opt" / "appliance")))
    return out


@pytest.mark.parametrize(
    ("unit", "limit"), [("appliance.service", 2.0), ("provisioning.service", 1.5)]
)
def test_units_verify_and_meet_the_exposure_goal(unit: str, limit: float, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    path = _rewritten(UNITS / unit, tmp_path)
    verify = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        [
            analyze,
            "security",
            "--offline=true",
            f"--threshold={int(limit * 10)}",
            str(UNITS / unit),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", security.stdout)
    assert found is not None
    assert float(found.group(1)) <= limit
    text = (UNITS / unit).read_text()
    for needed in (
        "RestartPreventExitStatus=78",
        "ProtectSystem=strict",
        "MemoryMax=",
        "DevicePolicy=closed",
        "StateDirectory=",
    ):
        assert needed in text

"""``appliance run`` at start, as systemd runs it (a fake ``NOTIFY_SOCKET``): every startup
failure is either exit 78 with one line naming the file or key, or a daemon that sends READY,
says what is wrong in STATUS and keeps retrying. And SIGHUP reloads instead of killing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.errors import EX_CONFIG
from appliance.identity import ID_FILE, KEY_FILE, enroll
from provisioning.server import ProvisioningServer

pytestmark = pytest.mark.slow  # daemons in subprocesses


def write_identity(state: Path, server: str) -> None:
    """What ``appliance enroll`` leaves behind, without a server."""
    state.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (state / KEY_FILE).write_bytes(pem)
    (state / KEY_FILE).chmod(0o600)
    (state / ID_FILE).write_text(json.dumps({"device_id": "dev_x", "server": server, "name": "x"}))


def write_config(path: Path, state: Path, extra: str = "") -> Path:
    path.write_text(
        f'[device]\nstate_dir = "{state}"\nboard = "mock"\n[audio]\nbackend = "wav"\n{extra}'
    )
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_daemon(config: Path, notify: Path | None = None) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "GPIOZERO_PIN_FACTORY": "mock",
        "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin",
    }
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "run",
        "--config",
        str(config),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("corrupt key", KEY_FILE),
        ("unreadable key", KEY_FILE),
        ("corrupt device.json", ID_FILE),
        ("device.json without a server", ID_FILE),
        ("unreadable device.json", ID_FILE),
    ],
)
async def test_a_broken_identity_exits_78_with_one_line_naming_the_file(
    tmp_path: Path, fault: str, named: str
) -> None:
    state = tmp_path / "state"
    write_identity(state, "http://127.0.0.1:9")
    match fault:
        case "corrupt key":
            (state / KEY_FILE).write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
        case "unreadable key":  # (a directory: root reads any file, whatever its mode)
            (state / KEY_FILE).unlink()
            (state / KEY_FILE).mkdir()
        case "corrupt device.json":
            (state / ID_FILE).write_text('{"device_id": "dev_x", ')
        case "device.json without a server":
            (state / ID_FILE).write_text('{"device_id": "dev_x"}')
        case "unreadable device.json":
            (state / ID_FILE).unlink()
            (state / ID_FILE).mkdir()
    proc = await run_daemon(write_config(tmp_path / "a.toml", state))
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == EX_CONFIG, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("appliance: configuration error: ")
    assert str(state / named) in lines[0]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def next_message(sock: socket.socket, starts: str, within: float = 30.0) -> str:
    """Wait for the next notify message that starts with ``starts``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {starts!r} from the daemon"
        message = (await asyncio.wait_for(loop.sock_recv(sock, 4096), left)).decode()
        if message.startswith(starts):
            return message


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 10)


async def test_no_microphone_at_start_is_ready_with_the_fault_in_status(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    state = tmp_path / "state"
    write_identity(state, f"http://127.0.0.1:{closed_port()}")
    missing = tmp_path / "no-mic.wav"
    config = write_config(tmp_path / "a.toml", state, f'wav_input = "{missing}"\n')
    proc = await run_daemon(config, tmp_path / "notify.sock")
    try:
        ready = await next_message(notify_socket, "READY=1")
        assert f"STATUS=error: microphone: cannot read {missing}" in ready
        assert proc.returncode is None, "alive, retrying"
    finally:
        assert await stop(proc) == 0


async def test_an_unreachable_server_at_start_is_ready_and_offline_with_the_reason(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    state = tmp_path / "state"
    port = closed_port()
    write_identity(state, f"http://127.0.0.1:{port}")
    proc = await run_daemon(write_config(tmp_path / "a.toml", state), tmp_path / "notify.sock")
    try:
        ready = await next_message(notify_socket, "READY=1")
        words = f"provisioning server unreachable: connection refused (127.0.0.1:{port})"
        assert f"STATUS=offline: {words}" in ready
    finally:
        assert await stop(proc) == 0


async def test_sighup_reloads_the_configuration_in_the_same_process(
    tmp_path: Path, server: ProvisioningServer, notify_socket: socket.socket
) -> None:
    state = tmp_path / "state"
    await enroll(server.base_url, server.store.create_token("default"), state, "hup")
    config = write_config(tmp_path / "a.toml", state)
    proc = await run_daemon(config, tmp_path / "notify.sock")
    try:
        await next_message(notify_socket, "READY=1")
        proc.send_signal(signal.SIGHUP)
        reloading = await next_message(notify_socket, "RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        ready = await next_message(notify_socket, "READY=1")  # the re-executed daemon
        assert "STATUS=idle" in ready
        assert proc.returncode is None, "same process, still running"
        # the configuration is read again: a bad one now stops it, as at a start
        config.write_text(config.read_text() + "[session]\nconnect_s = 0\n")
        proc.send_signal(signal.SIGHUP)
        assert await asyncio.wait_for(proc.wait(), 30) == EX_CONFIG
        assert proc.stderr is not None
        assert b"session.connect_s" in await proc.stderr.read()
    finally:
        await stop(proc)

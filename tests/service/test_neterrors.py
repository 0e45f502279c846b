"""Network failures in words (issue 14: "ConnectError" only, nothing said DNS or TLS): the
same words reach the exception, the log, STATUS, heartbeats and ``appliance check``."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink
from appliance.check import Context, run_checks
from appliance.config import AudioConfig, Config, DeviceConfig
from appliance.errors import ProvisioningError, RateLimited, RealtimeUnreachable
from appliance.heartbeat import send
from appliance.identity import Identity
from appliance.realtime.keys import EphemeralKey, StaticKeySource
from appliance.realtime.media import MicTrack
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from appliance.realtime.webrtc import RealtimeSession
from standin import StandIn, StandInConfig
from tests.e2e.harness import device
from tests.fakehttp import Fixed, fixed_reply
from tests.service.test_startup import write_identity
from tests.standin.conftest import API_KEY


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def failure(server: str, timeout_s: float = 5.0) -> ProvisioningError:
    identity = Identity("dev_x", server, Ed25519PrivateKey.generate())
    with pytest.raises(ProvisioningError) as caught:
        await ProvisioningKeySource(identity, timeout_s=timeout_s).get_key()
    return caught.value


async def test_dns_failure_is_named() -> None:
    exc = await failure("http://no-such-host.invalid")
    assert str(exc).startswith("provisioning server unreachable: DNS lookup failed for ")
    assert "no-such-host.invalid" in str(exc)


async def test_tls_to_a_plain_port_is_named() -> None:
    async with fixed_reply(Fixed(200, b"{}")) as plain:
        exc = await failure(plain.base_url.replace("http://", "https://"))
    assert "TLS handshake failed" in str(exc)
    assert "is it an https port?" in str(exc)


async def test_refused_and_timed_out_are_named() -> None:
    port = closed_port()
    assert f"connection refused (127.0.0.1:{port})" in str(
        await failure(f"http://127.0.0.1:{port}")
    )
    async with fixed_reply(Fixed(silent=True)) as silent:
        exc = await failure(silent.base_url, timeout_s=0.3)
    assert "timed out waiting for an answer" in str(exc)


async def test_rate_limited_is_named_with_the_wait() -> None:
    reply = Fixed(429, b'{"error": {"code": "rate_limited", "message": "slow down"}}')
    reply.headers["Retry-After"] = "30"
    async with fixed_reply(reply) as limited:
        exc = await failure(limited.base_url)
    assert isinstance(exc, RateLimited)
    assert str(exc) == "rate limited by the provisioning server (retry in 30 s)"
    assert exc.retry_after == 30


async def test_the_realtime_service_over_tls_to_a_plain_port_is_named() -> None:
    async with fixed_reply(Fixed(200, b"")) as plain:
        base = plain.base_url.replace("http://", "https://")
        session = RealtimeSession(
            keys=StaticKeySource(EphemeralKey("ek_x", time.time() + 60, base)),
            session={"type": "realtime"},
            mic=MicTrack(AudioFormat()),
            sink=WavSink(None, AudioFormat()),
            on_event=lambda _e: None,
        )
        with pytest.raises(RealtimeUnreachable, match="TLS handshake failed"):
            await session.connect()
        await session.close()


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


@pytest.mark.slow  # a device against real servers
async def test_the_words_reach_status_and_heartbeat(standin: StandIn, tmp_path: Path) -> None:
    identity = Identity("dev_x", "http://no-such-host.invalid", Ed25519PrivateKey.generate())
    source = ProvisioningKeySource(identity)
    async with device(standin, tmp_path) as dev:
        assert not await send(source, dev.app, time.monotonic())
        await dev.wait(m.State.OFFLINE, 5)
        status = dev.app.status_text()
    assert status.startswith("offline: provisioning server unreachable: DNS lookup failed")


@pytest.mark.slow  # a device against real servers
@pytest.mark.usefixtures("mock_pins")
async def test_appliance_check_names_the_failure(tmp_path: Path) -> None:
    async with fixed_reply(Fixed(200, b"{}")) as plain:
        write_identity(tmp_path / "state", plain.base_url.replace("http://", "https://"))
        config = Config(
            device=DeviceConfig(state_dir=tmp_path / "state", board="mock"),
            audio=AudioConfig(backend="wav"),
        )
        results = {r.name: r for r in await run_checks(Context(config, wait_button_s=0))}
    row = results["provisioning"]
    assert not row.ok
    assert "TLS handshake failed" in row.detail

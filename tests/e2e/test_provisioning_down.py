"""The provisioning server is down when the user wakes the device, then comes back."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from appliance import machine as m
from appliance.app import App
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink, WavSource
from appliance.config import AudioConfig, Config, DeviceConfig
from appliance.identity import enroll
from appliance.realtime.keys import CachedKeySource
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from appliance.realtime.tools import builtin_registry
from provisioning.server import ProvisioningServer, Settings
from standin import StandIn, StandInConfig
from tests.e2e.harness import Device
from tests.standin.conftest import API_KEY
from tests.waiting import Changes

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_dead_provisioning_server_means_offline_then_it_heals(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'prov.db'}",
        openai_api_key=API_KEY,
        port=port,
    )
    async with StandIn(StandInConfig(api_key=API_KEY)) as standin:
        settings = Settings(**{**settings.__dict__, "upstream_url": standin.base_url})
        async with ProvisioningServer(settings) as server:
            token = server.store.create_token("default", label="test")
            identity = await enroll(server.base_url, token, tmp_path / "state", "kitchen")
        # the server is gone; the device does not know yet
        config = Config(
            device=DeviceConfig(name="kitchen", state_dir=tmp_path / "state", board="mock"),
            audio=AudioConfig(backend="wav"),
        )
        source = WavSource(None, AudioFormat(16_000))
        keys = CachedKeySource(ProvisioningKeySource(identity, timeout_s=2))
        changed = Changes()
        app = App(
            config,
            source=source,
            sink=WavSink(None, AudioFormat(48_000)),
            keys=keys,
            tools=builtin_registry(),
            on_state=changed.notify,
        )
        dev = Device(app, source, None, None, changed)  # type: ignore[arg-type]
        stop = asyncio.Event()
        runner = asyncio.create_task(app.run(stop))
        try:
            app.post(m.ButtonPressed())
            await dev.wait(m.State.OFFLINE, 10)
            assert "provisioning server unreachable" in app.status_text()
            assert m.State.ERROR not in dev.states(), "down is not the device's fault"
            async with ProvisioningServer(settings):  # back, on the same address
                await dev.wait(m.State.IDLE, 10)  # the back-off ends
                await dev.push_to_talk()
                await dev.wait(m.State.SPEAKING, 20)
                await dev.wait(m.State.IDLE, 20)
                assert app.stats.turns == 1
        finally:
            stop.set()
            await runner

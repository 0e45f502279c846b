"""``appliance check`` on fake hardware against a real stand-in and provisioning server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.check import Context, run_checks, table
from appliance.config import AudioConfig, Config, DeviceConfig
from appliance.identity import enroll
from provisioning.live_relay import live_profile
from provisioning.server import ProvisioningServer, Settings
from provisioning.standin import StandIn, StandInConfig


@pytest.fixture
def pins(mock_pins: MockFactory) -> MockFactory:
    return mock_pins


def config(state: Path) -> Config:
    return Config(
        device=DeviceConfig(state_dir=state, board="mock"), audio=AudioConfig(backend="wav")
    )


@pytest.mark.parametrize("backend", ["realtime", "live"])
async def test_all_checks_pass_on_a_working_setup(
    tmp_path: Path, pins: MockFactory, backend: str
) -> None:
    async with StandIn(StandInConfig(api_key="sk-check")) as standin:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'p.db'}",
            upstream_url=standin.base_url,
            openai_api_key="sk-check",
            port=0,
        )
        async with ProvisioningServer(settings) as server:
            if backend == "live":  # the group's backend: the check opens a Live session
                server.store.ensure_group("default", live_profile("gpt-live-1"))
            await enroll(server.base_url, server.store.create_token("default"), tmp_path, "c")
            ctx = Context(config(tmp_path), wait_button_s=5)

            async def keep_pressing() -> None:  # a patient installer
                while True:
                    await asyncio.sleep(0.2)
                    pins.pin(17).drive_low()
                    await asyncio.sleep(0.05)
                    pins.pin(17).drive_high()

            presser = asyncio.create_task(keep_pressing())
            results = await run_checks(ctx)
            presser.cancel()
    text = table(results)
    assert [r.name for r in results] == [
        "config",
        "audio",
        "leds",
        "button",
        "provisioning",
        "session",
    ]
    assert all(r.ok for r in results), text
    assert "GPIO17 pressed" in text
    assert "dBFS" in text
    assert ("GPT-Live" in text) is (backend == "live")
    assert ("live_" in text) is (backend == "live")


async def test_failures_are_reported_not_raised(tmp_path: Path, pins: MockFactory) -> None:
    ctx = Context(config(tmp_path / "never-enrolled"), wait_button_s=0.2)
    results = {r.name: r for r in await run_checks(ctx)}
    assert not results["button"].ok
    assert not results["provisioning"].ok
    assert "enroll" in results["provisioning"].detail
    assert results["session"].detail == "skipped: no key"

"""The device's clock is wrong (a Pi has no RTC and boots before NTP): it signs and judges in
the provisioning server's time, and a refusal for time is never shown as a revocation.

Against the real provisioning server, with only the device's clock skewed (injected, or
``faketime`` on a subprocess); the server's ``clock_skew`` refusal, which only the newer
server sends, is played by a fixed HTTP answer to the shared contract."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import machine as m
from appliance.clock import ServerClock
from appliance.errors import ClockSkew, DeviceRevoked
from appliance.identity import Identity, enroll
from appliance.realtime.keys import CachedKeySource, EphemeralKey
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.server import ProvisioningServer, Settings
from standin import StandIn, StandInConfig
from tests.conftest import require_tool
from tests.e2e.harness import device
from tests.fakehttp import Fixed, fixed_reply
from tests.standin.conftest import API_KEY

YEAR = 365 * 86400.0


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


@pytest.fixture
async def server(tmp_path: Path, standin: StandIn) -> AsyncIterator[ProvisioningServer]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        openai_api_key=API_KEY,
        upstream_url=standin.base_url,
        port=0,
    )
    async with ProvisioningServer(settings) as srv:
        yield srv


async def skewed(server: ProvisioningServer, tmp_path: Path, skew_s: float) -> Identity:
    """An enrolled device whose own clock is ``skew_s`` off."""
    token = server.store.create_token("default")
    enrolled = await enroll(server.base_url, token, tmp_path / "state", "skewed")
    clock = ServerClock(lambda: time.time() + skew_s)
    return Identity(enrolled.device_id, enrolled.server, enrolled.private_key, clock)


@pytest.mark.slow  # a device against real servers
@pytest.mark.parametrize("skew_s", [3.0, 45.0, -40.0, -YEAR])
async def test_a_skewed_device_mints_and_heartbeats_in_server_time(
    server: ProvisioningServer, tmp_path: Path, skew_s: float
) -> None:
    identity = await skewed(server, tmp_path, skew_s)
    source = ProvisioningKeySource(identity, timeout_s=5)
    key = await source.get_key()  # refused once, resynced from Date, accepted
    assert key.value.startswith("ek_")
    assert identity.clock.offset_s == pytest.approx(-skew_s, abs=1.5)
    await source.heartbeat({"version": "test"})  # in step from now on: no refusal at all
    keys = CachedKeySource(source, clock=identity.clock.now)
    assert (await keys.get_key()).value.startswith("ek_")


async def test_a_cached_key_expires_by_the_servers_clock_not_the_devices() -> None:
    clock = ServerClock(lambda: time.time() - 60)  # the device is a minute behind
    clock.learn(time.time(), precise=True)
    minted: list[EphemeralKey] = []

    class Minting:
        async def get_key(self) -> EphemeralKey:
            minted.append(EphemeralKey(f"ek_{len(minted)}", time.time() + 15, "http://x"))
            return minted[-1]

    keys = CachedKeySource(Minting(), margin_s=20, clock=clock.now)
    await keys.get_key()
    await keys.get_key()
    assert len(minted) == 2, "15 s left by the server's clock is inside the 20 s margin"


def refusal(code: str, server_time: float | None = None) -> Fixed:
    body: dict[str, object] = {"error": {"code": code, "message": f"refused: {code}"}}
    if server_time is not None:
        body["server_time"] = server_time
    return Fixed(401, json.dumps(body).encode(), {"Date": formatdate(usegmt=True)})


async def test_clock_skew_is_retried_in_server_time_then_named_never_revoked(
    tmp_path: Path,
) -> None:
    async with fixed_reply(refusal("clock_skew", time.time() + 3600)) as fake:
        identity = Identity("dev_x", fake.base_url, Ed25519PrivateKey.generate())
        with pytest.raises(ClockSkew) as caught:
            await ProvisioningKeySource(identity).get_key()
        assert fake.requests == 2, "one retry with the server's time"
        assert identity.clock.offset_s == pytest.approx(3600, abs=2)
        assert "clock_skew" in str(caught.value)
        assert "revoked" not in str(caught.value)
        assert "refused this device" not in str(caught.value)
    async with fixed_reply(refusal("revoked")) as fake:
        identity = Identity("dev_x", fake.base_url, Ed25519PrivateKey.generate())
        with pytest.raises(DeviceRevoked) as revoked:
            await ProvisioningKeySource(identity).get_key()
        assert fake.requests == 1, "definitive: no retry"
        assert revoked.value.code == "revoked"


@pytest.mark.slow  # a device against real servers
async def test_the_device_shows_clock_skew_as_such(standin: StandIn, tmp_path: Path) -> None:
    async with (
        fixed_reply(refusal("clock_skew", time.time())) as fake,
        device(standin, tmp_path) as dev,
    ):
        identity = Identity("dev_x", fake.base_url, Ed25519PrivateKey.generate())
        dev.app.sessions.keys = ProvisioningKeySource(identity)
        dev.app.post(m.ButtonPressed())
        await dev.wait(m.State.ERROR, 10)
        status = dev.app.status_text()
        assert dev.app.snapshot.refused, "shown until the user tries again, never dark"
    assert status.startswith("error: clock skew: ")
    assert "refused this device" not in status


@pytest.mark.slow  # a device against real servers
async def test_appliance_check_passes_with_the_device_clock_45_s_ahead(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    """The real code path, in a process whose clock ``faketime`` moved."""
    faketime = require_tool("faketime")
    token = server.store.create_token("default")
    await enroll(server.base_url, token, tmp_path / "state", "ahead")
    config = tmp_path / "a.toml"
    config.write_text(
        f'[device]\nstate_dir = "{tmp_path / "state"}"\nboard = "mock"\n[audio]\nbackend = "wav"\n'
    )
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    proc = await asyncio.create_subprocess_exec(
        *(faketime, "-f", "+45s", sys.executable, "-m", "appliance", "check"),
        *("--config", str(config), "--button-wait", "0"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode() + err.decode()
    rows = {line.split()[0]: line for line in out.decode().splitlines() if line.strip()}
    assert "PASS" in rows["provisioning"], text
    assert "PASS" in rows["session"], text

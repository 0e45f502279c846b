"""The GPT-Live relay: device-authenticated like a mint, the group's config and the project key
stay on the server, the group's backend moves its devices — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiortc import RTCPeerConnection
from sqlalchemy import select

from appliance.errors import BackendMoved, DeviceRevoked, ProvisioningUnavailable, RateLimited
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.live_relay import (
    check_live_profile,
    device_tools,
    live_profile,
    session_config,
)
from provisioning.server import ProvisioningServer, profile_for
from provisioning.store import Audit
from standin import StandIn
from tests.provisioning.conftest import STANDARD_KEY, enrolled, serving
from tests.provisioning.test_server import forged
from tests.wire_live import validate_create_request

INSTRUCTIONS = "Secret house rules: never mention the garage code 4711."
BACKEND_PROMPT = "Backend prompt that only the server knows."
GET_TIME = {
    "type": "function",
    "name": "get_time",
    "description": "The device's local time.",
    "parameters": {"type": "object", "properties": {}},
}


@pytest.fixture
async def server(db_url: str, standin: StandIn) -> AsyncIterator[ProvisioningServer]:
    async with serving(db_url, standin) as srv:
        srv.store.ensure_group(
            "default",
            live_profile(
                "gpt-live-1",
                voice="cedar",
                instructions=INSTRUCTIONS,
                delegation={
                    "type": "responses",
                    "responses": {"model": "gpt-5.5", "instructions": BACKEND_PROMPT},
                },
            ),
        )
        yield srv


async def offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, str(pc.localDescription.sdp)


async def test_the_relay_returns_only_the_answer_and_the_session_id(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    pc, sdp = await offer()
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{server.base_url}/v1/live/sessions",
                headers={"Authorization": f"Bearer {identity.token()}"},
                json={"sdp": sdp, "tools": [GET_TIME]},
            )
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"session_id", "sdp"}, "nothing but the answer reaches the device"
        assert body["sdp"].startswith("v=0")
        seen_by_device = response.text + json.dumps(dict(response.headers))
        for secret in (STANDARD_KEY, INSTRUCTIONS, BACKEND_PROMPT, "gpt-live-1", "delegation"):
            assert secret not in seen_by_device
        # what went upstream: a valid LiveCreateParams with the group's config, the device's
        # tools under Responses delegation and a per-device safety identifier
        live = standin.live.open[body["session_id"]]
        # no media hop: the answer (its ICE candidates) is the service's own, byte for byte
        assert body["sdp"] == live.pc.localDescription.sdp
        config = live.config
        validate_create_request({"session": config, "transport": {"type": "webrtc", "sdp": sdp}})
        assert config["instructions"] == INSTRUCTIONS
        assert config["audio"]["output"]["voice"] == "cedar"
        assert config["delegation"]["responses"]["tools"] == [GET_TIME]
        assert identity.device_id not in config["safety_identifier"]
        assert "type" not in config
        allowed = config["client"]["data_channel"]["allowed_client_events"]
        assert "session.update" not in allowed, "a device cannot rewrite the backend's config"
    finally:
        await pc.close()
    await server.app.state.ledger.flush()
    with server.store.session() as db:
        rows = [a for a in db.scalars(select(Audit)) if a.action == "live.session"]
    assert [(r.device_id, r.detail["outcome"], r.detail["session_id"]) for r in rows] == [
        (identity.device_id, "ok", body["session_id"])
    ]


async def test_the_relay_applies_the_mint_rules(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path
) -> None:
    identity = await enrolled(server, tmp_path)
    url = f"{server.base_url}/v1/live/sessions"
    pc, sdp = await offer()
    try:
        async with httpx.AsyncClient() as http:
            token = identity.token()
            assert (
                await http.post(
                    url, headers={"Authorization": f"Bearer {token}"}, json={"sdp": sdp}
                )
            ).status_code == 200
            replay = await http.post(
                url, headers={"Authorization": f"Bearer {token}"}, json={"sdp": sdp}
            )
            assert (replay.status_code, replay.json()["error"]["code"]) == (401, "replayed")
            now = int(time.time())
            skewed = await http.post(
                url,
                headers={
                    "Authorization": f"Bearer {forged(identity, iat=now + 90, exp=now + 120)}"
                },
                json={"sdp": sdp},
            )
            refused = skewed.json()["error"]
            assert (skewed.status_code, refused["code"]) == (401, "clock_skew")
            assert refused["server_time"] == pytest.approx(time.time(), abs=5)
            unsigned = await http.post(url, json={"sdp": sdp})
            assert unsigned.status_code == 401
            bad = await http.post(
                url, headers={"Authorization": f"Bearer {identity.token()}"}, json={"sdp": "hi"}
            )
            assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_request")
            tools = await http.post(
                url,
                headers={"Authorization": f"Bearer {identity.token()}"},
                json={"sdp": sdp, "tools": [{"type": "function", "name": "no spaces"}]},
            )
            assert tools.status_code == 400
        server.store.ensure_group("default", limits={"device_per_minute": 2})
        relay = ProvisioningKeySource(identity)
        await relay.open_live(sdp, [])  # the second session this minute
        with pytest.raises(RateLimited):
            await relay.open_live(sdp, [])
        standin.faults.calls_status = 503
        server.store.ensure_group("default", limits={"device_per_minute": 100})
        with pytest.raises(ProvisioningUnavailable):
            await relay.open_live(sdp, [])
        server.store.ensure_group("default", limits={"device_per_minute": 100})
        server.store.set_device_state(identity.device_id, "revoke")
        with pytest.raises(DeviceRevoked):
            await relay.open_live(sdp, [])
    finally:
        await pc.close()


async def test_the_groups_backend_moves_its_devices(
    server: ProvisioningServer, standin: StandIn, tmp_path: Path
) -> None:
    source = ProvisioningKeySource(await enrolled(server, tmp_path))
    with pytest.raises(BackendMoved) as moved:
        await source.get_key()  # a Live group has no ephemeral keys
    assert moved.value.backend == "live"
    server.store.ensure_group("default", profile_for(voice="sage"))
    pc, sdp = await offer()
    try:
        with pytest.raises(BackendMoved) as back:
            await source.open_live(sdp, [])
        assert back.value.backend == "realtime"
    finally:
        await pc.close()
    assert (await source.get_key()).value.startswith("ek_")


def test_live_profiles_and_device_tools_are_checked() -> None:
    with pytest.raises(ValueError, match="voice"):
        check_live_profile({"type": "live", "model": "gpt-live-1", "voice": "marin"})
    with pytest.raises(ValueError, match="model"):
        check_live_profile({"type": "live"})
    with pytest.raises(ValueError, match="delegation"):
        live_profile(delegation={"type": "somebody"})
    assert device_tools([GET_TIME]) == [GET_TIME]
    group_time = {**GET_TIME, "description": "The group's own clock."}
    volume = {**GET_TIME, "name": "set_volume"}
    profile = live_profile(
        delegation={"type": "responses", "responses": {"model": "gpt-5.5", "tools": [group_time]}}
    )
    merged = session_config(profile, "dev_1", [GET_TIME, volume])
    assert merged["delegation"]["responses"]["tools"] == [group_time, volume], "group wins"
    assert profile["delegation"]["responses"]["tools"] == [group_time], "the profile is untouched"
    client = session_config(live_profile(delegation={"type": "client"}), "dev_1", [GET_TIME])
    assert "tools" not in str(client["delegation"]), "no backend to call them under client"
    for bad in ([{"type": "web_search"}], [{**GET_TIME, "secret": 1}], [GET_TIME] * 33, "x"):
        with pytest.raises(ValueError, match="tools"):
            device_tools(bad)


def test_group_set_takes_a_live_profile_and_refuses_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from provisioning.__main__ import main
    from provisioning.store import Group, Store

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("PROVISIONING_DATABASE_URL", url)
    good = live_profile("gpt-live-1.1", voice="cedar", instructions="Be brief.")
    assert main(["group", "set", "kitchen", "--profile", json.dumps(good)]) == 0
    bad = {**good, "turn_detection": None}  # a Realtime key: Live configs are strict
    assert main(["group", "set", "kitchen", "--profile", json.dumps(bad)]) == 65
    assert "turn_detection" in capsys.readouterr().err
    store = Store(url)
    try:
        with store.session() as db:
            assert db.get_one(Group, "kitchen").profile == good
    finally:
        store.close()

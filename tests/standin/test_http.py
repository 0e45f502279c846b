"""The stand-in's HTTP face: keys, calls, errors — and the openai SDK pointed at it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection

from standin import StandIn, StandInConfig
from tests.peer import GaPeer
from tests.standin.conftest import API_KEY, mint


async def post_secret(base: str, body: Any, key: str = API_KEY) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{base}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {key}"},
            json=body,
        )


def assert_openai_error(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code
    assert error["message"]


async def test_client_secret_has_the_ga_shape(standin: StandIn) -> None:
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime-2.1",
            "instructions": "Be brief.",
            "audio": {"output": {"voice": "cedar"}},
        },
    }
    response = await post_secret(standin.base_url, body)
    assert response.status_code == 200
    data = response.json()
    assert data["value"].startswith("ek_")
    assert data["session"]["audio"]["output"]["voice"] == "cedar"
    assert data["session"]["instructions"] == "Be brief."
    assert data["session"]["object"] == "realtime.session"
    from openai.types.realtime import ClientSecretCreateResponse

    ClientSecretCreateResponse.model_validate(data)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"expires_after": {"seconds": 5}, "session": {"type": "realtime"}},
            "expires_after.seconds",
        ),
        (
            {"expires_after": {"seconds": 7201}, "session": {"type": "realtime"}},
            "expires_after.seconds",
        ),
        (
            {"expires_after": {"anchor": "now"}, "session": {"type": "realtime"}},
            "expires_after.anchor",
        ),
        ({"session": {"model": "gpt-realtime-2.1"}}, "session.type"),
        (
            {"session": {"type": "realtime", "audio": {"output": {"voice": "nope"}}}},
            "session.audio.output.voice",
        ),
        ({"session": {"type": "realtime", "temperature": 0.8}}, "session.temperature"),
    ],
)
async def test_bad_bodies_are_400_with_the_param(
    standin: StandIn, body: dict[str, Any], param: str
) -> None:
    response = await post_secret(standin.base_url, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_bad_standard_key_is_401(standin: StandIn) -> None:
    response = await post_secret(standin.base_url, {"session": {"type": "realtime"}}, key="sk-x")
    assert_openai_error(response, 401, "invalid_api_key")


async def test_calls_reject_unknown_and_expired_keys_and_bad_sdp() -> None:
    now = [1_000_000.0]
    async with StandIn(StandInConfig(api_key=API_KEY), clock=lambda: now[0]) as standin:
        key = await mint(standin.base_url, seconds=10)
        async with httpx.AsyncClient() as http:
            url = f"{standin.base_url}/v1/realtime/calls"
            sdp_headers = {"Content-Type": "application/sdp"}
            unknown = await http.post(
                url, content="v=0\r\n", headers={**sdp_headers, "Authorization": "Bearer ek_nope"}
            )
            assert_openai_error(unknown, 401, "invalid_api_key")
            bad_sdp = await http.post(
                url, content="hello", headers={**sdp_headers, "Authorization": f"Bearer {key}"}
            )
            assert_openai_error(bad_sdp, 400, "invalid_offer")
            now[0] += 11
            expired = await http.post(
                url, content="v=0\r\n", headers={**sdp_headers, "Authorization": f"Bearer {key}"}
            )
            assert_openai_error(expired, 401, "invalid_api_key")


async def test_one_key_opens_several_calls_and_hangup(standin: StandIn) -> None:
    key = await mint(standin.base_url)
    peers = [GaPeer(standin.base_url, key), GaPeer(standin.base_url, key)]
    for peer in peers:
        assert (await peer.connect()).status_code == 201
        await peer.wait_for("session.created")
    assert len(standin.calls) == 2
    call_id = peers[0].call_id
    async with httpx.AsyncClient() as http:
        url = f"{standin.base_url}/v1/realtime/calls/{call_id}/hangup"
        refused = await http.post(url, headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401, "hangup needs the standard key"
        ok = await http.post(url, headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
        again = await http.post(url, headers={"Authorization": f"Bearer {API_KEY}"})
        assert_openai_error(again, 404, "call_id_not_found")
    await asyncio.wait_for(peers[0].closed.wait(), 10)
    assert len(standin.calls) == 1
    for peer in peers:
        await peer.close()


async def test_multipart_call_with_the_standard_key(standin: StandIn) -> None:
    peer = GaPeer(standin.base_url, API_KEY)
    session = {
        "type": "realtime",
        "model": "gpt-realtime-2.1",
        "audio": {"output": {"voice": "ash"}},
    }
    assert (await peer.connect(multipart_session=session)).status_code == 201
    created = await peer.wait_for("session.created")
    assert created["session"]["audio"]["output"]["voice"] == "ash"
    await peer.close()


@pytest.mark.parametrize("status", [429, 500])
async def test_fault_switch_answers_calls_with_an_error(standin: StandIn, status: int) -> None:
    standin.faults.calls_status = status
    key = await mint(standin.base_url)
    peer = GaPeer(standin.base_url, key)
    response = await peer.connect()
    assert response.status_code == status
    assert response.json()["error"]["message"]
    if status == 429:
        assert response.headers["retry-after"] == "1"
    await peer.close()


async def test_the_openai_sdk_works_against_the_stand_in(standin: StandIn) -> None:
    from openai import OpenAI

    client = OpenAI(api_key=API_KEY, base_url=f"{standin.base_url}/v1", max_retries=0)
    secret = await asyncio.to_thread(
        client.realtime.client_secrets.create,
        session={"type": "realtime", "model": "gpt-realtime-2.1"},
        expires_after={"anchor": "created_at", "seconds": 60},
    )
    assert secret.value.startswith("ek_")
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    answer = await asyncio.to_thread(
        client.realtime.calls.create,
        sdp=pc.localDescription.sdp,
        session={"type": "realtime", "model": "gpt-realtime-2.1"},
    )
    text = answer.read().decode() if hasattr(answer, "read") else str(answer)
    assert text.startswith("v=0")
    assert "m=audio" in text
    await pc.close()


async def test_a_long_run_forgets_keys_long_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("standin.server.KEEP_KEYS", 3)
    now = [1_000_000.0]
    async with StandIn(StandInConfig(api_key=API_KEY), clock=lambda: now[0]) as standin:
        old = [await mint(standin.base_url, seconds=10) for _ in range(3)]
        now[0] += 10 + 601  # expired more than 10 minutes ago
        recent = await mint(standin.base_url, seconds=10)
        assert set(standin.keys) == {recent}, "the three stale keys are dropped"
        fresh = [await mint(standin.base_url) for _ in range(5)]
        assert set(standin.keys) == {recent, *fresh}, "live keys are never dropped"
        assert not set(old) & set(standin.keys)

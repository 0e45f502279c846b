"""The stand-in's GPT-Live endpoint: create refusals, two turns with a delegated tool call,
input mute, standby billing, close. Every event both ways is validated strictly against
``openai.types.live`` (tests/wire_live.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from standin import StandIn
from tests.live_peer import LivePeer
from tests.speech import speech
from tests.standin.conftest import API_KEY

pytestmark = pytest.mark.slow  # a WebRTC call in real time

GET_TIME = {
    "type": "function",
    "name": "get_time",
    "description": "The device's local time.",
    "parameters": {"type": "object", "properties": {}},
}
RESPONSES = {
    "type": "responses",
    "responses": {"model": "gpt-5.5", "tools": [GET_TIME]},
}


async def create(standin: StandIn, body: Any, key: str = API_KEY) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{standin.base_url}/v1/live/sessions",
            headers={"Authorization": f"Bearer {key}"},
            json=body,
        )


@pytest.mark.parametrize(
    ("body", "key", "status", "code"),
    [
        ({"session": {"model": "gpt-live-1"}}, "sk-wrong", 401, "invalid_api_key"),
        (
            {
                "session": {"model": "gpt-live-1", "voice": "marin"},
                "transport": {"type": "webrtc", "sdp": "v=0"},
            },
            API_KEY,
            400,
            "unknown_parameter",
        ),
        (
            {"session": {}, "transport": {"type": "webrtc", "sdp": "v=0"}},
            API_KEY,
            400,
            "missing_required_parameter",
        ),
        (
            {"session": {"model": "gpt-live-1"}, "transport": {"type": "websocket"}},
            API_KEY,
            400,
            "invalid_value",
        ),
        (
            {"session": {"model": "gpt-live-1"}, "transport": {"type": "webrtc", "sdp": "hello"}},
            API_KEY,
            400,
            "invalid_offer",
        ),
    ],
)
async def test_create_refusals(
    standin: StandIn, body: dict[str, Any], key: str, status: int, code: str
) -> None:
    response = await create(standin, body, key)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_fault_switch_refuses_live_sessions_too(standin: StandIn) -> None:
    standin.faults.calls_status = 503
    peer = LivePeer(standin.base_url, API_KEY)
    try:
        assert (await peer.connect({"model": "gpt-live-1"})).status_code == 503
    finally:
        await peer.close()


async def test_two_turns_with_a_delegated_tool_call(standin: StandIn) -> None:
    peer = LivePeer(standin.base_url, API_KEY)
    try:
        response = await peer.connect({"model": "gpt-live-1", "delegation": RESPONSES})
        assert response.status_code == 200
        started = await peer.wait_for("session.started")
        assert peer.events[0] is started, "session.started comes before anything else"
        assert started["session"]["id"] == peer.session_id
        assert started["session"]["delegation"]["type"] == "responses"

        peer.mic.play(speech("what is the weather like on the moon", pad_s=1.0))
        await peer.wait_for("session.input_transcript.delta")
        await peer.wait_for("session.usage.updated", within=30)
        assert "moon" in peer.text("session.input_transcript.delta")
        assert "cold at night" in peer.text("session.output_transcript.delta")

        peer.mic.play(speech("what time is it", pad_s=1.0))
        delegated = await peer.wait_for("session.delegation.created", within=20)
        assert delegated["delegation"]["target"] == "responses"
        done = await peer.wait_match(
            lambda e: (
                e["type"] == "response.event" and e["event"]["type"] == "response.output_item.done"
            ),
            what="a function call",
        )
        assert done["delegation_id"] == delegated["delegation"]["id"]
        call = done["event"]["item"]
        assert call["name"] == "get_time"
        peer.send(
            {
                "type": "response.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": json.dumps({"time": "half past nine"}),
                },
            }
        )
        peer.send({"type": "response.create"})
        await peer.wait_for("session.usage.updated", count=2, within=30)
        assert "half past nine" in peer.text("session.output_transcript.delta")

        mute = peer.send({"type": "session.input_audio.mute"})
        assert (await peer.wait_for("session.input_audio.muted"))["client_event_id"] == mute
        peer.send({"type": "session.input_audio.unmute"})
        await peer.wait_for("session.input_audio.unmuted")
        peer.send({"type": "session.close"})
        closed = await peer.wait_for("session.closed")
        assert closed["reason"] == "close_requested"
    finally:
        await peer.close()


async def test_client_delegation_speaks_the_applications_commentary(standin: StandIn) -> None:
    peer = LivePeer(standin.base_url, API_KEY)
    try:
        await peer.connect({"model": "gpt-live-1", "delegation": {"type": "client"}})
        await peer.wait_for("session.started")
        # the stand-in's script delegates "time"; under client delegation the app answers
        peer.mic.play(speech("what is the weather like on the moon", pad_s=1.0))
        await peer.wait_for("session.usage.updated", within=30)
        peer.mic.play(speech("what time is it", pad_s=1.0))
        delegated = await peer.wait_for("session.delegation.created", within=30)
        assert delegated["delegation"]["target"] == "client"
        peer.send(
            {
                "type": "session.commentary.append",
                "delegation_id": delegated["delegation"]["id"],
                "content": "It is ten to ten.",
            }
        )
        await peer.wait_for("session.commentary.appended")
        await peer.wait_for("session.usage.updated", count=2, within=30)
        assert "ten to ten" in peer.text("session.output_transcript.delta")
    finally:
        await peer.close()


async def test_standby_pauses_inference_and_bills_it_as_paused(standin: StandIn) -> None:
    peer = LivePeer(standin.base_url, API_KEY)
    try:
        config = {"model": "gpt-live-1", "wake_policy": {"type": "speech"}, "idle_timeout_s": 1}
        await peer.connect(config)
        await peer.wait_for("session.started")
        await peer.wait_for("session.usage.updated", within=10)  # the pause
        live = standin.live.open[str(peer.session_id)]
        assert live.paused
        peer.send({"type": "session.close"})
        closed = await peer.wait_for("session.closed")
        usage = closed["usage"]
        assert usage["active_seconds"] + usage["paused_seconds"] == int(usage["seconds"])
    finally:
        await peer.close()


async def test_unknown_and_malformed_client_events_get_errors(standin: StandIn) -> None:
    peer = LivePeer(standin.base_url, API_KEY)
    try:
        await peer.connect({"model": "gpt-live-1"})
        await peer.wait_for("session.started")
        peer.channel.send(json.dumps({"type": "response.cancel", "event_id": "x1"}))
        error = (await peer.wait_for("error"))["error"]
        assert error["client_event_id"] == "x1"
        peer.send({"type": "response.create", "event_id": "x2"})  # needs Responses delegation
        error = (await peer.wait_for("error", count=2))["error"]
        assert error["client_event_id"] == "x2"
    finally:
        await peer.close()


async def test_data_channel_permissions_are_enforced(standin: StandIn) -> None:
    peer = LivePeer(standin.base_url, API_KEY)
    allowed = ["session.input_audio.mute", "session.close"]
    try:
        await peer.connect(
            {"model": "gpt-live-1", "client": {"data_channel": {"allowed_client_events": allowed}}}
        )
        await peer.wait_for("session.started")
        assert (await peer.wait_for("info"))["code"] == "data_channel_permissions"
        update = peer.send({"type": "session.update", "session": {"triggers": []}})
        error = (await peer.wait_for("error"))["error"]
        assert (error["code"], error["client_event_id"]) == ("event_not_allowed", update)
        peer.send({"type": "session.input_audio.mute"})
        await peer.wait_for("session.input_audio.muted")
        assert "session.updated" not in peer.types()
    finally:
        await peer.close()

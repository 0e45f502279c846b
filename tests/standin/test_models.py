"""The stand-in and models: ``GET /v1/models`` with shutdown dates, and a ``session.update``
that names the session's own model (the official clients send it with every update)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai.types import Model

from appliance_common.models import DEFAULT_MODEL, DEFAULT_TRANSCRIPTION_MODEL
from standin import StandIn
from tests.standin.conftest import API_KEY
from tests.standin.test_events import GET_TIME, connect


async def test_models_list_carries_shutdown_dates(standin: StandIn) -> None:
    async with httpx.AsyncClient() as http:
        refused = await http.get(f"{standin.base_url}/v1/models")
        listed = await http.get(
            f"{standin.base_url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list"
    models = {m.id: m for m in map(Model.model_validate, body["data"])}
    assert models["gpt-realtime"].shutdown_date == "2027-01-20"
    assert models["gpt-4o-mini-transcribe"].shutdown_date == "2027-02-26"
    assert models[DEFAULT_MODEL].shutdown_date is None


async def test_models_list_follows_what_the_test_sets(standin: StandIn) -> None:
    standin.models = {"gpt-realtime-2.1": "2027-09-01"}
    async with httpx.AsyncClient() as http:
        listed = await http.get(
            f"{standin.base_url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert [(m["id"], m["shutdown_date"]) for m in listed.json()["data"]] == [
        ("gpt-realtime-2.1", "2027-09-01")
    ]


@pytest.mark.parametrize(
    "minted", [{"type": "realtime", "model": DEFAULT_MODEL}, {"type": "realtime"}]
)
async def test_session_update_repeating_the_model_is_applied(
    standin: StandIn, minted: dict[str, Any]
) -> None:
    """The official clients put their model (today's default, ``gpt-realtime-2.1``) in every
    ``session.update``: its tools and instructions must take effect, not be refused with the
    model, also when the key named no model (the service's default applies)."""
    peer = await connect(standin, minted)
    try:
        created = await peer.wait_for("session.created")
        assert created["session"]["model"] == DEFAULT_MODEL
        peer.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "model": DEFAULT_MODEL,
                    "instructions": "Be brief.",
                    "tools": [GET_TIME],
                },
            }
        )
        session = (await peer.wait_for("session.updated"))["session"]
        assert session["model"] == DEFAULT_MODEL
        assert session["instructions"] == "Be brief."
        assert [t["name"] for t in session["tools"]] == ["get_time"]
        assert "error" not in peer.types()
    finally:
        await peer.close()


async def test_session_update_changing_the_model_is_refused_whole(standin: StandIn) -> None:
    """Reference §3: a session's model cannot change. The update is refused with an
    ``error`` naming ``session.model`` and the client's event; nothing of it applies, and
    the session goes on."""
    peer = await connect(standin, {"type": "realtime", "model": DEFAULT_MODEL})
    try:
        change = peer.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "model": "gpt-realtime-2.1-mini",
                    "instructions": "Be brief.",
                },
            }
        )
        error = (await peer.wait_for("error"))["error"]
        assert (error["type"], error["param"], error["event_id"]) == (
            "invalid_request_error",
            "session.model",
            change,
        )
        peer.send({"type": "session.update", "session": {"type": "realtime", "tools": []}})
        session = (await peer.wait_for("session.updated"))["session"]
        assert session["model"] == DEFAULT_MODEL
        assert session["instructions"] != "Be brief.", "nothing of the refused update applied"
    finally:
        await peer.close()


async def test_the_groups_transcription_model_beats_the_devices(standin: StandIn) -> None:
    """A group moved to another transcription model on the server: the device's own
    (its config default) must not override it in ``session.update``; a group that names
    none leaves the device's in place."""
    from appliance.audio.base import AudioFormat
    from appliance.audio.wav import WavSink
    from appliance.realtime.keys import EphemeralKey, StaticKeySource
    from appliance.realtime.media import MicTrack
    from appliance.realtime.webrtc import RealtimeSession

    def transcribing(model: str) -> dict[str, Any]:
        return {"type": "realtime", "audio": {"input": {"transcription": {"model": model}}}}

    device_wants = transcribing(DEFAULT_TRANSCRIPTION_MODEL)
    for group, expected in [
        (transcribing("gpt-live-transcribe"), "gpt-live-transcribe"),
        ({"type": "realtime"}, DEFAULT_TRANSCRIPTION_MODEL),
    ]:
        async with httpx.AsyncClient() as http:
            minted = (
                await http.post(
                    f"{standin.base_url}/v1/realtime/client_secrets",
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    json={"session": group},
                )
            ).json()
        value, expires_at = minted["value"], minted["expires_at"]
        key = EphemeralKey(value, expires_at, standin.base_url, minted["session"])
        session = RealtimeSession(
            keys=StaticKeySource(key),
            session=device_wants,
            mic=MicTrack(AudioFormat(16_000)),
            sink=WavSink(None, AudioFormat(48_000)),
            on_event=lambda _event: None,
        )
        await session.connect()
        try:
            call = standin.calls[session.call_id or ""]
            assert call.session["audio"]["input"]["transcription"]["model"] == expected
        finally:
            await session.close()

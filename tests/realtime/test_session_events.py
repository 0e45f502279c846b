"""Server events the device handles (rather than ignores): the conversation's items, the
service's output buffer, diarized transcription segments, and out-of-band announcements."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink
from appliance.realtime.keys import EphemeralKey, StaticKeySource
from appliance.realtime.media import MicTrack
from appliance.realtime.webrtc import RealtimeSession
from standin import StandIn, StandInConfig
from tests.realtime.test_session import open_session
from tests.standin.conftest import API_KEY
from tests.waiting import Recorded, observe, until
from tests.wire import validate_client, validate_server


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as s:
        yield s


@pytest.mark.slow  # a WebRTC call in real time
async def test_a_barge_in_during_an_announcement_truncates_nothing(standin: StandIn) -> None:
    """An out-of-band response's item is in no conversation: truncating it is an error
    (and the previous reply's item must not be cut to the announcement's length)."""
    events: Recorded[m.Event] = Recorded()
    session = await open_session(standin, events)
    call = standin.calls[str(session.call_id)]
    speaker, out = observe(session.playout.sink, "frames"), observe(call, "sent")

    def count(kind: type[m.Event]) -> int:
        return sum(isinstance(e, kind) for e in events)

    session.request_response(instructions="Say: the moon is far away")
    await until(lambda: count(m.ReplyAudioStopped) == 1, events)
    reply_item = next(e for e in call.sent if e["type"] == "conversation.item.added")
    assert reply_item["item"]["id"] in session.conversation
    session.announce("timer", "Say: " + "your tea timer is up, " * 6)
    await until(lambda: count(m.ReplyAudioStarted) == 2, events)
    await until(lambda: session.playout.reply_ms > 0, speaker, what="the announcement plays")
    session.interrupt()
    await until(lambda: any(e["type"] == "output_audio_buffer.cleared" for e in out), out)
    await until(lambda: count(m.ResponseDone) == 2, events)
    sent = [e["type"] for e in call.received]
    assert "response.cancel" in sent
    assert "conversation.item.truncate" not in sent
    assert [e for e in call.sent if e["type"] == "error"] == []
    for event in call.received:
        validate_client(event)
    await session.close()


def offline_session(heard: list[tuple[str, str]]) -> RealtimeSession:
    key = EphemeralKey("ek_unused", time.time() + 600, "http://127.0.0.1:9")
    return RealtimeSession(
        keys=StaticKeySource(key),
        session={"type": "realtime"},
        mic=MicTrack(AudioFormat(16_000)),
        sink=WavSink(None, AudioFormat(48_000)),
        on_event=lambda e: None,
        on_transcript=lambda role, text: heard.append((role, text)),
    )


def feed(session: RealtimeSession, event: dict[str, Any]) -> None:
    validate_server(event)  # only what the real service may send
    session._on_message(json.dumps(event))  # as if it came over the data channel


def segment(item: str, text: str, start: float) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.segment",
        "event_id": f"e_{item}_{start}",
        "item_id": item,
        "content_index": 0,
        "id": f"seg_{start}",
        "speaker": "A",
        "start": start,
        "end": start + 1,
        "text": text,
    }


async def test_diarized_segments_stand_in_when_the_transcript_fails() -> None:
    heard: list[tuple[str, str]] = []
    session = offline_session(heard)
    feed(session, segment("item_1", "what time", 0.0))
    feed(session, segment("item_1", "is it", 1.0))
    feed(
        session,
        {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": "e_f",
            "item_id": "item_1",
            "content_index": 0,
            "error": {"type": "server_error", "code": None, "message": "busy", "param": None},
        },
    )
    assert heard == [("user", "what time is it")]
    feed(session, segment("item_2", "hello", 0.0))
    feed(
        session,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "e_c",
            "item_id": "item_2",
            "content_index": 0,
            "transcript": "hello there",
            "usage": {"type": "duration", "seconds": 1.0},
        },
    )
    assert heard[-1] == ("user", "hello there"), "the final transcript wins over segments"
    await session.close()


def muted(session: RealtimeSession) -> bool:
    return session.playout.muted


async def test_conversation_items_are_tracked_and_a_cleared_buffer_stops_playback() -> None:
    session = offline_session([])
    item = {"id": "item_9", "type": "message", "role": "assistant", "content": []}
    feed(
        session,
        {
            "type": "conversation.item.added",
            "event_id": "e1",
            "previous_item_id": None,
            "item": item,
        },
    )
    assert "item_9" in session.conversation
    feed(session, {"type": "conversation.item.deleted", "event_id": "e2", "item_id": "item_9"})
    assert "item_9" not in session.conversation
    feed(session, {"type": "output_audio_buffer.started", "event_id": "e3", "response_id": "r1"})
    assert not muted(session)
    feed(session, {"type": "output_audio_buffer.cleared", "event_id": "e4", "response_id": "r1"})
    assert muted(session), "what is still queued locally is dropped"
    await asyncio.sleep(0)
    await session.close()

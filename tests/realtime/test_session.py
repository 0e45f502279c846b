"""The device's Realtime session against the stand-in, plus its pure helpers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink
from appliance.errors import CallRejected
from appliance.realtime import messages as msg
from appliance.realtime.keys import CachedKeySource, EphemeralKey, StaticKeySource
from appliance.realtime.media import MicTrack
from appliance.realtime.tools import Tool, ToolRegistry, builtin_registry
from appliance.realtime.webrtc import RealtimeSession
from standin import StandIn, StandInConfig
from tests.standin.conftest import API_KEY, mint
from tests.waiting import Recorded, observe, until
from tests.wire import validate_client


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as s:
        yield s


async def open_session(standin: StandIn, events: list[m.Event]) -> RealtimeSession:
    key = EphemeralKey(await mint(standin.base_url), time.time() + 600, standin.base_url)
    session = RealtimeSession(
        keys=StaticKeySource(key),
        session={"type": "realtime", "tools": builtin_registry().schemas()},
        mic=MicTrack(AudioFormat(16_000)),
        sink=WavSink(None, AudioFormat(48_000)),
        on_event=events.append,
    )
    await session.connect()
    return session


@pytest.mark.slow  # a WebRTC call in real time
async def test_connect_configures_the_session_and_keeps_the_call_id(standin: StandIn) -> None:
    session = await open_session(standin, [])
    assert session.call_id in standin.calls
    call = standin.calls[session.call_id]
    assert [e["type"] for e in call.received] == ["session.update"]
    assert call.session["tools"][0]["name"] == "get_time"
    assert session.max_message_size == 262_144  # read from the answer (aiortc advertises it)
    await session.close()


@pytest.mark.slow  # a WebRTC call in real time
async def test_response_create_is_held_back_while_one_is_active(standin: StandIn) -> None:
    events: Recorded[m.Event] = Recorded()
    session = await open_session(standin, events)
    session.request_response(instructions="Say: first answer with several words in it")
    session.request_response(instructions="Say: second")
    call = standin.calls[session.call_id or ""]
    await events.until(lambda got: sum(isinstance(e, m.ResponseDone) for e in got) >= 2)
    creates = [e for e in call.received if e["type"] == "response.create"]
    assert len(creates) == 2
    errors = [e for e in call.sent if e["type"] == "error"]
    assert errors == [], "the sequencer never provokes conversation_already_has_active_response"
    for event in call.received:
        validate_client(event)
    await session.close()


@pytest.mark.slow  # a WebRTC call in real time
async def test_interrupt_cancels_clears_and_truncates(standin: StandIn) -> None:
    events: Recorded[m.Event] = Recorded()
    session = await open_session(standin, events)
    call = standin.calls[session.call_id or ""]
    speaker, sent = observe(session.playout.sink, "frames"), observe(call, "sent")
    session.request_response(instructions="Say: " + "a very long reply that goes on " * 5)
    await events.first(lambda e: isinstance(e, m.ReplyAudioStarted), "the reply's audio")
    await until(lambda: session.playout.reply_ms >= 1000, speaker, what="a second played")
    played = session.playout.reply_ms
    session.interrupt()
    await until(lambda: any(e["type"] == "conversation.item.truncated" for e in sent), sent)
    kinds = [e["type"] for e in call.received]
    assert kinds[-3:] == [
        "response.cancel",
        "output_audio_buffer.clear",
        "conversation.item.truncate",
    ]
    truncate = call.received[-1]
    assert truncate["audio_end_ms"] == played, "truncated at what was actually played"
    done = await events.first(lambda e: isinstance(e, m.ResponseDone), "the response's end")
    assert isinstance(done, m.ResponseDone)
    assert done.status == "cancelled", "cut, not played to its end"
    await session.close()


async def test_rejected_call_invalidates_the_cached_key(standin: StandIn) -> None:
    key = EphemeralKey("ek_revoked", time.time() + 600, standin.base_url)
    keys = CachedKeySource(StaticKeySource(key))
    session = RealtimeSession(
        keys=keys,
        session={"type": "realtime"},
        mic=MicTrack(AudioFormat()),
        sink=WavSink(None, AudioFormat()),
        on_event=lambda e: None,
    )
    with pytest.raises(CallRejected) as caught:
        await session.connect()
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert keys._key is None
    await session.close()


@pytest.mark.slow  # a WebRTC call in real time
async def test_session_expiry_is_a_lost_session() -> None:
    async with StandIn(StandInConfig(api_key=API_KEY, max_session_s=1.5)) as standin:
        events: Recorded[m.Event] = Recorded()
        session = await open_session(standin, events)
        await events.first(lambda e: isinstance(e, m.SessionLost), "the session's end")
        lost = [e for e in events if isinstance(e, m.SessionLost)]
        assert len(lost) == 1, "reported once"
        assert lost[0].reason == "session_expired"
        await session.close()


def test_unknown_and_malformed_server_events_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert msg.parse("not json") is None
    assert msg.parse("[1, 2]") is None
    unknown = msg.parse(json.dumps({"type": "response.telepathy.delta", "event_id": "e"}))
    assert unknown is not None
    assert msg.to_machine_event(unknown) is None
    assert msg.to_machine_event({"type": "response.done"}) is None  # no response object
    assert msg.to_machine_event({"type": "response.created", "response": {"id": "r1"}}) == (
        m.ResponseStarted("r1")
    )
    item = {"type": "function_call", "status": "completed", "call_id": "c", "name": "get_time"}
    assert msg.to_machine_event({"type": "response.output_item.done", "item": item}) == (
        m.ToolCallRequested("c", "get_time", "{}")
    )


def test_every_client_event_builder_is_valid_ga_with_an_event_id() -> None:
    built = [
        msg.session_update({"type": "realtime", "instructions": "x"}),
        msg.turn_detection_update(None),
        msg.turn_detection_update({"type": "server_vad", "silence_duration_ms": 400}),
        msg.commit_input(),
        msg.clear_input(),
        msg.response_cancel(),
        msg.output_audio_clear(),
        msg.response_create(),
        msg.response_create(
            instructions="Say hi", out_of_band=True, metadata={"k": "v"}, modalities=["text"]
        ),
        msg.truncate("item_1", 1234),
        msg.function_call_output("call_1", '{"ok": true}'),
        msg.user_text("hello"),
        msg.user_image("data:image/jpeg;base64,AAAA"),
    ]
    ids = {e["event_id"] for e in built}
    assert len(ids) == len(built)
    for event in built:
        validate_client(event)


def test_errors_are_tied_to_the_client_event_that_caused_them() -> None:
    sent = msg.SentEvents(size=2)
    a, b, c = msg.commit_input(), msg.response_create(), msg.response_cancel()
    for event in (a, b, c):
        sent.remember(event)
    assert sent.cause(c["event_id"]) == "response.cancel"
    assert sent.cause(b["event_id"]) == "response.create"
    assert sent.cause(a["event_id"]) is None, "bounded memory"


async def test_tools_validate_time_out_and_never_raise() -> None:
    registry = ToolRegistry()

    async def slow() -> str:
        await asyncio.Event().wait()  # a tool that never answers
        return "late"

    def broken() -> None:
        raise RuntimeError("boom")

    params = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    registry.register(Tool("slow", "slow", slow, timeout_s=0.1))
    registry.register(Tool("broken", "broken", broken))
    registry.register(Tool("double", "double", lambda x: {"y": 2 * x}, params))
    assert json.loads(await registry.call("double", '{"x": 21}')) == {"y": 42}
    assert "missing arguments: x" in await registry.call("double", "{}")
    assert "bad arguments" in await registry.call("double", "[1]")
    assert "longer than" in await registry.call("slow", "{}")
    assert "RuntimeError" in await registry.call("broken", "{}")
    assert "unknown tool" in await registry.call("nope", "{}")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Tool("slow", "again", slow))
    now = json.loads(await builtin_registry().call("get_time", "{}"))
    assert set(now) == {"time", "date", "timezone", "iso"}


async def test_cached_keys_are_reused_until_shortly_before_expiry() -> None:
    clock = [1000.0]
    fetched: list[int] = []

    class Counting:
        async def get_key(self) -> EphemeralKey:
            fetched.append(1)
            return EphemeralKey(f"ek_{len(fetched)}", clock[0] + 60, "http://x")

    keys = CachedKeySource(Counting(), margin_s=10, clock=lambda: clock[0])
    assert (await keys.get_key()).value == "ek_1"
    clock[0] += 45
    assert (await keys.get_key()).value == "ek_1"
    clock[0] += 6
    assert (await keys.get_key()).value == "ek_2"
    assert "ek_2" not in repr(await keys.get_key()), "key values stay out of reprs and logs"


def test_the_offer_asks_for_opus_in_band_fec() -> None:
    from appliance_common.opus import ask_for_opus_fec

    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96 0\r\n"
        "a=rtpmap:96 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    asked = ask_for_opus_fec(sdp)
    assert "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 minptime=10;useinbandfec=1\r\n" in asked
    assert ask_for_opus_fec(asked) == asked, "never twice"
    assert ask_for_opus_fec("v=0\r\nm=audio 9 RTP 0\r\na=rtpmap:0 PCMU/8000\r\n").count("fmtp") == 0


@pytest.mark.slow  # a WebRTC call in real time
async def test_no_requests_left_defers_the_response_until_the_limit_resets(
    standin: StandIn,
) -> None:
    session = await open_session(standin, [])
    call = standin.calls[str(session.call_id)]
    limits = {
        "type": "rate_limits.updated",
        "event_id": "event_rl1",
        "rate_limits": [
            {"name": "requests", "limit": 100, "remaining": 0, "reset_seconds": 0.6},
            {"name": "tokens", "limit": 1000, "remaining": 900, "reset_seconds": 1},
        ],
    }
    received = observe(call, "received")
    session._on_message(json.dumps(limits))  # as if it came over the data channel
    session.request_response()
    session.send(msg.clear_input())  # the channel is ordered: a response.create sent now
    clear = await received.first(lambda e: e["type"] == "input_audio_buffer.clear")
    before = received[: received.index(clear)]  # would have arrived before this
    assert not any(e["type"] == "response.create" for e in before), "held back"
    await received.first(lambda e: e["type"] == "response.create", "the deferred response")
    await session.close()


def test_quiet_log_logs_a_burst_then_counts_and_reports_per_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    quiet = msg.QuietLog(logging.getLogger("quiet"), "odd event", burst=2, clock=lambda: now[0])
    for i in range(10):
        quiet.note("a.b", f"event_id e{i}")
    quiet.note("c.d")
    now[0] = 61.0
    quiet.note("a.b", "event_id e10")  # a new window: the count, then a new burst
    quiet.note("a.b", "event_id e11")
    quiet.note("a.b", "event_id e12")
    quiet.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "odd event a.b (event_id e0)",
        "odd event a.b (event_id e1); more of this kind are counted, not logged",
        "odd event c.d",
        "odd event a.b: 8 more in the last 61 s",
        "odd event a.b (event_id e10)",
        "odd event a.b (event_id e11); more of this kind are counted, not logged",
        "odd event a.b: 1 more in the last 0 s",
    ]

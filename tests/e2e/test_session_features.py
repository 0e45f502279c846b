"""gpt-realtime-2.x session features end to end: the real daemon (``App``) against the
stand-in, with the mic fed from WAV files. Parallel tool calls after a spoken preamble,
server VAD back on after a local barge-in in push-to-talk, and a barge-in during an
out-of-band announcement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance import machine as m
from appliance.config import RealtimeConfig
from appliance.realtime import messages as msg
from appliance.realtime.tools import Tool, builtin_registry
from appliance_dev.demo import asset
from standin import StandIn
from tests.e2e.harness import Device, client_events, device
from tests.standin.conftest import scripted
from tests.waiting import observe, until
from tests.wire import extras, validate_client

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in

SCRIPT = """
transcripts = ["what time is it", "what time is it"]

[[rule]]
when_transcript_contains = "time"
calls = [{name = "left"}, {name = "right"}]
then_say = "Both answered: {left} and {right}."

[[rule]]
default = true
say = "I heard you say: {text}."
"""


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StandIn]:
    async with scripted(tmp_path, SCRIPT) as server:
        yield server


def received(standin: StandIn) -> list[dict[str, Any]]:
    events = client_events(standin)
    for event in events:
        assert extras(validate_client(event)) == [], event["type"]
    return events


def turn_detections(events: list[dict[str, Any]]) -> list[Any]:
    """The turn detection of every session.update that set one, in order."""
    return [
        e["session"]["audio"]["input"]["turn_detection"]
        for e in events
        if e["type"] == "session.update" and "input" in e["session"].get("audio", {})
    ]


def server_errors(standin: StandIn) -> list[dict[str, Any]]:
    calls = standin.finished_calls + list(standin.calls.values())
    return [e["error"] for call in calls for e in call.sent if e["type"] == "error"]


async def test_parallel_tools_run_together_after_a_preamble_then_one_response(
    standin: StandIn, tmp_path: Path
) -> None:
    """Reasoning on: the model says "Let me check." and calls two tools in one response.
    Each tool waits for the other to start (so they must run concurrently), each output is
    sent, then ONE response.create; the turn never drops to IDLE on the way."""
    both_running = asyncio.Barrier(2)

    async def left() -> dict[str, str]:
        await both_running.wait()
        return {"left": "L"}

    async def right() -> dict[str, str]:
        await both_running.wait()
        return {"right": "R"}

    tools = builtin_registry()
    tools.register(Tool("left", "The left answer.", left, timeout_s=10))
    tools.register(Tool("right", "The right answer.", right, timeout_s=10))
    realtime = RealtimeConfig(reasoning_effort="low", parallel_tool_calls=True)
    async with device(standin, tmp_path, realtime=realtime, tools=tools) as dev:
        await dev.push_to_talk("question-time.wav")
        thinking = await dev.seen(m.State.THINKING)
        await dev.seen(m.State.IDLE, thinking, within=40)
        said = [text for role, text in dev.app.stats.transcripts if role == "assistant"]
    assert said == ["Let me check.", "Both answered: L and R."]
    assert dev.states()[thinking:] == [
        m.State.THINKING,
        m.State.SPEAKING,  # the preamble
        m.State.THINKING,  # the tools' answers are asked for
        m.State.SPEAKING,
        m.State.IDLE,
    ]
    events = received(standin)
    update = next(e for e in events if e["type"] == "session.update")["session"]
    assert update["reasoning"] == {"effort": "low"}
    assert update["parallel_tool_calls"] is True
    kinds = [e["type"] for e in events if e["type"] != "session.update"]
    after = kinds[kinds.index("input_audio_buffer.commit") :]
    assert after == [
        "input_audio_buffer.commit",
        "response.create",
        "conversation.item.create",
        "conversation.item.create",
        "response.create",
    ]
    outputs = [e["item"]["output"] for e in events if e["type"] == "conversation.item.create"]
    assert sorted(map(json.loads, outputs), key=str) == [{"left": "L"}, {"right": "R"}]
    assert server_errors(standin) == []


async def barge_in_over_a_push_to_talk_reply(dev: Device) -> int:
    await dev.push_to_talk()
    await dev.wait(m.State.SPEAKING)
    mark = len(dev.states())
    dev.app.post(m.SpeechStarted())  # what the local speech gate posts on a barge-in
    await dev.seen(m.State.LISTENING, mark)
    return mark


async def test_after_a_local_barge_in_in_push_to_talk_server_vad_ends_the_next_turn(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path) as dev:
        mark = await barge_in_over_a_push_to_talk_reply(dev)
        assert dev.app.snapshot.mode is m.Mode.HANDS_FREE
        dev.source.queue(asset("question-moon.wav"))  # nobody presses: VAD must end it
        thinking = await dev.seen(m.State.THINKING, mark)
        await dev.seen(m.State.IDLE, thinking, within=30)
    events = received(standin)
    turns = turn_detections(events)
    assert turns[-2] is None, "push-to-talk switched server VAD off"
    assert turns[-1]["type"] == "server_vad", "the barge-in switched it back on"
    assert [e["type"] for e in events].count("input_audio_buffer.commit") == 1, "only the PTT turn"
    calls = standin.finished_calls + list(standin.calls.values())
    stops = [
        e for call in calls for e in call.sent if e["type"] == "input_audio_buffer.speech_stopped"
    ]
    assert stops, "the service's VAD ended the hands-free turn"


async def test_a_barge_in_during_an_announcement_truncates_nothing(
    standin: StandIn, tmp_path: Path
) -> None:
    async with device(standin, tmp_path) as dev:
        await dev.push_to_talk()  # a conversation item to (wrongly) truncate
        await dev.wait(m.State.SPEAKING)
        await dev.wait(m.State.IDLE)
        await dev.app.tools.call("set_timer", '{"seconds": 1, "label": "tea"}')
        mark = len(dev.states())
        await dev.seen(m.State.SPEAKING, mark)
        session = dev.app.session
        assert session is not None
        speaker = observe(dev.sink, "frames")
        await until(lambda: session.playout.reply_ms > 0, speaker)  # the user heard some of it
        dev.app.post(m.ButtonPressed())  # over the announcement
        await dev.seen(m.State.LISTENING, mark)
        marker = msg.session_update({"type": "realtime"})
        session.send(marker)  # the channel is ordered: anything sent before arrives first
        call = standin.calls[str(session.call_id)]
        await observe(call, "received").first(lambda e: e.get("event_id") == marker["event_id"])
        dev.app.post(m.ButtonReleased())
    kinds = [e["type"] for e in received(standin)]
    assert "response.cancel" in kinds, "the announcement was cut"
    assert "conversation.item.truncate" not in kinds
    assert server_errors(standin) == []


async def test_an_idle_timeout_reply_opens_a_hands_free_turn(
    standin: StandIn, tmp_path: Path
) -> None:
    """server_vad's idle_timeout_ms: after a reply, silence makes the service commit it
    (``input_audio_buffer.timeout_triggered``) and ask "are you still there?"; the device
    shows it and then listens for the answer without a press."""
    realtime = RealtimeConfig(idle_timeout_ms=5000)
    async with device(standin, tmp_path, realtime=realtime, no_speech_s=1.0) as dev:
        await dev.push_to_talk()
        first_idle = await dev.seen(m.State.IDLE, 1)
        speaking = await dev.seen(m.State.SPEAKING, first_idle, within=20)
        listening = await dev.seen(m.State.LISTENING, speaking)
        await dev.seen(m.State.IDLE, listening)
        said = [text for role, text in dev.app.stats.transcripts if role == "assistant"]
    assert dev.states()[first_idle:][:5] == [
        m.State.IDLE,
        m.State.THINKING,
        m.State.SPEAKING,
        m.State.LISTENING,
        m.State.IDLE,  # nobody answered
    ]
    assert said[-1] == "Are you still there?"
    turns = turn_detections(received(standin))
    assert turns[-1]["idle_timeout_ms"] == 5000, "server VAD back on after push-to-talk"
    calls = standin.finished_calls + list(standin.calls.values())
    assert any(e["type"] == "input_audio_buffer.timeout_triggered" for c in calls for e in c.sent)

"""The stand-in's gpt-realtime-2.x behaviour: spoken preambles before tool calls, parallel
tool calls, max_output_tokens, semantic VAD eagerness, diarized transcription segments and
the session fields that carry them. Every event on the wire is validated (tests.peer), and
none carries a field the ``openai`` types do not define."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from standin import StandIn
from tests.peer import GaPeer
from tests.speech import speech
from tests.standin.conftest import scripted
from tests.standin.test_events import GET_TIME, connect
from tests.wire import extras, validate_client, validate_server

pytestmark = pytest.mark.slow  # a WebRTC call in real time

SCRIPT = """
transcripts = ["hello", "what time is it"]

[[rule]]
when_contains = "time and weather"
calls = [{name = "get_time"}, {name = "get_weather", arguments = {city = "Oslo"}}]
then_say = "It is {time} and {sky}."

[[rule]]
when_contains = "scripted preamble"
call = "get_time"
preamble = "One moment."
then_say = "It is {time}."

[[rule]]
when_contains = "time"
call = "get_time"
then_say = "It is {time}."

[[rule]]
default = true
say = "I heard you say: {text}."
"""
GET_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StandIn]:
    async with scripted(tmp_path, SCRIPT) as server:
        yield server


RESPONSE_ONLY = {"session.id", "session.object", "session.expires_at"}
"""Fields the real service sends in ``session.created``/``.updated`` (reference §2) that the
event types, which reuse the request model, do not define."""


def no_extras(peer: GaPeer) -> None:
    found = {(e["type"], x) for e in peer.events for x in extras(validate_server(e))}
    assert {(kind, x) for kind, x in found if x not in RESPONSE_ONLY} == set()


def audio_input(**fields: Any) -> dict[str, Any]:
    """A realtime session whose ``audio.input`` has ``fields``."""
    return {"type": "realtime", "audio": {"input": fields}}


def tool_session(**fields: Any) -> dict[str, Any]:
    return {"type": "realtime", "tools": [GET_TIME, GET_WEATHER], **fields}


async def test_parallel_tool_calls_after_a_preamble_in_one_response(standin: StandIn) -> None:
    peer = await connect(
        standin,
        tool_session(reasoning={"effort": "high"}, parallel_tool_calls=True),
    )
    peer.ask("what are the time and weather")
    done = (await peer.wait_for("response.done", within=20))["response"]
    kinds = [(item["type"], item.get("name")) for item in done["output"]]
    assert kinds == [
        ("message", None),
        ("function_call", "get_time"),
        ("function_call", "get_weather"),
    ]
    preamble = await peer.wait_for("response.output_audio_transcript.done")
    assert preamble["transcript"] == "Let me check."
    added = [e["output_index"] for e in peer.events if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2]
    types = peer.types()
    assert types.index("output_audio_buffer.started") < types.index(
        "response.function_call_arguments.done"
    ), "the preamble is spoken before the calls"
    calls = [item for item in done["output"] if item["type"] == "function_call"]
    for call, output in zip(calls, ['{"time": "10:42"}', '{"sky": "sunny"}'], strict=True):
        peer.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": output,
                },
            }
        )
    peer.send({"type": "response.create"})
    answer = await peer.wait_for("response.output_audio_transcript.done", count=2, within=20)
    assert answer["transcript"] == "It is 10:42 and sunny."
    await peer.wait_for("output_audio_buffer.stopped", count=2, within=20)
    no_extras(peer)
    await peer.close()


async def test_without_parallel_tool_calls_one_call_per_response(standin: StandIn) -> None:
    peer = await connect(standin, tool_session(parallel_tool_calls=False))
    peer.ask("what are the time and weather")
    done = (await peer.wait_for("response.done", within=20))["response"]
    assert [item["type"] for item in done["output"]] == ["function_call"], "no preamble either"
    await peer.close()


async def test_a_scripted_preamble_without_reasoning(standin: StandIn) -> None:
    peer = await connect(standin, tool_session())
    peer.ask("a scripted preamble for the time")
    done = (await peer.wait_for("response.done", within=20))["response"]
    assert [item["type"] for item in done["output"]] == ["message", "function_call"]
    transcript = await peer.wait_for("response.output_audio_transcript.done")
    assert transcript["transcript"] == "One moment."
    await peer.close()


async def test_max_output_tokens_cuts_the_reply_short(standin: StandIn) -> None:
    peer = await connect(standin, {"type": "realtime", "max_output_tokens": 10})
    peer.send({"type": "response.create", "response": {"instructions": "Say: one two three four"}})
    done = (await peer.wait_for("response.done", within=20))["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"]["reason"] == "max_output_tokens"
    assert done["max_output_tokens"] == 10
    assert done["output"][0]["status"] == "incomplete"
    transcript = await peer.wait_for("response.output_audio_transcript.done")
    assert transcript["transcript"] == "one two"
    peer.send(
        {
            "type": "response.create",
            "response": {"instructions": "Say: five six seven", "max_output_tokens": "inf"},
        }
    )
    done = (await peer.wait_for("response.done", count=2, within=20))["response"]
    assert done["status"] == "completed", "a response's own cap overrides the session's"
    no_extras(peer)
    await peer.close()


@pytest.mark.parametrize(("eagerness", "turns"), [("high", 2), ("low", 1)])
async def test_semantic_vad_eagerness_decides_whether_a_pause_ends_the_turn(
    standin: StandIn, eagerness: str, turns: int
) -> None:
    """A 0.9 s pause mid-sentence: ``high`` takes the turn, ``low`` waits for the rest."""
    turn = {"type": "semantic_vad", "eagerness": eagerness, "create_response": False}
    peer = await connect(standin, audio_input(turn_detection=turn))
    first = speech("what is the weather", pad_s=0.9)
    peer.mic.play(np.concatenate([first, speech("on the moon", pad_s=2.0)]))
    await peer.mic.until_played()
    await peer.wait_for("input_audio_buffer.committed", count=turns, within=5)
    assert peer.types().count("input_audio_buffer.speech_started") == turns
    await peer.close()


async def test_diarized_transcription_sends_segments(standin: StandIn) -> None:
    peer = await connect(
        standin,
        audio_input(
            transcription={"model": "gpt-4o-transcribe-diarize"},
            turn_detection={"type": "server_vad", "create_response": False},
        ),
    )
    peer.mic.play(speech("hello", pad_s=1.0))
    done = await peer.wait_for("conversation.item.input_audio_transcription.completed", within=10)
    segments = [
        e for e in peer.events if e["type"] == "conversation.item.input_audio_transcription.segment"
    ]
    assert " ".join(s["text"] for s in segments) == done["transcript"] == "hello"
    assert {s["item_id"] for s in segments} == {done["item_id"]}
    no_extras(peer)
    await peer.close()


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("reasoning", {"effort": "extreme"}, "session.reasoning.effort"),
        ("max_output_tokens", 5000, "session.max_output_tokens"),
        ("truncation", {"type": "retention_ratio", "retention_ratio": 2}, "session.truncation"),
        ("parallel_tool_calls", "yes", "session.parallel_tool_calls"),
    ],
)
async def test_bad_feature_values_are_refused(
    standin: StandIn, field: str, value: object, param: str
) -> None:
    peer = await connect(standin)
    bad = {
        "type": "session.update",
        "event_id": "e_bad",
        "session": {"type": "realtime", field: value},
    }
    peer.channel.send(json.dumps(bad))  # invalid on purpose: not via peer.send
    error = (await peer.wait_for("error"))["error"]
    assert (error["param"], error["event_id"]) == (param, "e_bad")
    await peer.close()


async def test_good_feature_values_are_applied_and_echoed(standin: StandIn) -> None:
    peer = await connect(standin)
    session = {
        "type": "realtime",
        "reasoning": {"effort": "xhigh"},
        "parallel_tool_calls": True,
        "max_output_tokens": 300,
        "truncation": {
            "type": "retention_ratio",
            "retention_ratio": 0.8,
            "token_limits": {"post_instructions": 8000},
        },
        "audio": {
            "input": {
                "noise_reduction": {"type": "far_field"},
                "turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000},
            }
        },
    }
    validate_client({"type": "session.update", "session": session})
    peer.send({"type": "session.update", "session": session})
    updated = (await peer.wait_for("session.updated"))["session"]
    for key in ("reasoning", "parallel_tool_calls", "max_output_tokens", "truncation"):
        assert updated[key] == session[key]
    assert updated["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert updated["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 6000
    no_extras(peer)
    await peer.close()


def test_script_rules_for_parallel_calls_and_preambles() -> None:
    from standin.script import Rule, Script, _normalise

    rule = Rule(**_normalise({"when_contains": "x", "calls": [{"name": "a"}, {"name": "b"}]}))
    script = Script(rules=(rule,))
    decision = script.decide(1, "x", {"a", "b"})
    assert decision.calls == (("a", "{}"), ("b", "{}"))
    assert decision.preamble is None, "left to the session's reasoning setting"
    assert script.decide(1, "x", {"a"}).calls == (), "every tool must be declared"
    both = Script.after_tool("{a} and {b}: {output}", '{"a": 1}', '{"b": 2}')
    assert both == '1 and 2: {"a": 1}; {"b": 2}'
    bad: dict[str, Any]
    for bad in (
        {"calls": []},
        {"calls": [{"name": "a"}], "call": "b"},
        {"calls": [{"arguments": {}}]},
    ):
        with pytest.raises(ValueError, match="calls"):
            _normalise(dict(bad))

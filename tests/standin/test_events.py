"""The stand-in's event engine: each scenario, with every event validated (tests.peer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from standin import StandIn, StandInConfig
from tests.peer import GaPeer
from tests.speech import speech
from tests.standin.conftest import API_KEY, mint

pytestmark = pytest.mark.slow  # a WebRTC call in real time

GET_TIME = {
    "type": "function",
    "name": "get_time",
    "description": "time",
    "parameters": {"type": "object", "properties": {}},
}


async def connect(standin: StandIn, session: dict[str, Any] | None = None) -> GaPeer:
    peer = GaPeer(standin.base_url, await mint(standin.base_url, session))
    assert (await peer.connect()).status_code == 201
    await peer.wait_for("session.created")
    return peer


@pytest.fixture
async def peer(standin: StandIn) -> AsyncIterator[GaPeer]:
    p = await connect(standin)
    yield p
    await p.close()


def manual(peer: GaPeer) -> str:
    return peer.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        }
    )


async def test_session_update_partial_and_refusals(peer: GaPeer) -> None:
    peer.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}})
    updated = await peer.wait_for("session.updated")
    assert updated["session"]["instructions"] == "Hi."
    assert updated["session"]["audio"]["output"]["voice"] == "alloy", "untouched fields stay"
    bad = peer.send({"type": "session.update", "session": {"type": "realtime", "model": "gpt-4o"}})
    error = (await peer.wait_for("error"))["error"]
    assert (error["event_id"], error["param"]) == (bad, "session.model")


async def test_voice_is_locked_once_audio_was_spoken(peer: GaPeer) -> None:
    peer.send({"type": "response.create", "response": {"instructions": "Say: hello there"}})
    await peer.wait_for("output_audio_buffer.stopped", within=15)
    change = peer.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}},
        }
    )
    error = (await peer.wait_for("error"))["error"]
    assert error["code"] == "cannot_update_voice"
    assert error["event_id"] == change


async def test_manual_commit_and_text_input(peer: GaPeer) -> None:
    manual(peer)
    await peer.wait_for("session.updated")
    too_soon = peer.send({"type": "input_audio_buffer.commit"})
    error = (await peer.wait_for("error"))["error"]
    assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", too_soon)
    peer.mic.play(speech("hello there", pad_s=0.3))
    await peer.mic.until_played()
    peer.send({"type": "input_audio_buffer.commit"})
    await peer.wait_for("input_audio_buffer.committed")
    peer.ask("tell me about the moon")
    done = await peer.wait_for("response.output_audio_transcript.done", within=15)
    assert "moon" in done["transcript"]
    # long after the speech reached it (its reply came later still), the VAD never fired
    assert "input_audio_buffer.speech_started" not in peer.types(), "no VAD when it is null"


async def test_second_response_create_while_active_is_refused(peer: GaPeer) -> None:
    peer.send({"type": "response.create", "response": {"instructions": "Say: one two three four"}})
    await peer.wait_for("response.created")
    second = peer.send({"type": "response.create"})
    error = (await peer.wait_for("error"))["error"]
    assert (error["code"], error["event_id"]) == (
        "conversation_already_has_active_response",
        second,
    )


async def test_client_cancel_clear_and_truncate(peer: GaPeer) -> None:
    peer.send(
        {
            "type": "response.create",
            "response": {"instructions": "Say: " + "this is a rather long answer " * 4},
        }
    )
    await peer.wait_for("output_audio_buffer.started")
    await peer.until_heard(len(peer.heard) + 50)  # a second of the reply plays
    peer.send({"type": "response.cancel"})
    peer.send({"type": "output_audio_buffer.clear"})
    done = await peer.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    await peer.wait_for("output_audio_buffer.cleared")
    item_id = (await peer.wait_for("response.output_item.added"))["item"]["id"]
    peer.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 500,
        }
    )
    truncated = await peer.wait_for("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 500
    again = peer.send({"type": "response.cancel"})
    error = (await peer.wait_for("error"))["error"]
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", again)


async def test_speech_interrupts_a_reply(peer: GaPeer) -> None:
    peer.send(
        {
            "type": "response.create",
            "response": {"instructions": "Say: " + "a long long story about the sea " * 4},
        }
    )
    await peer.wait_for("output_audio_buffer.started")
    await peer.until_heard(len(peer.heard) + 40)  # the reply is well under way
    peer.mic.play(speech("stop please", pad_s=1.0))
    await peer.wait_for("input_audio_buffer.speech_started", within=5)
    done = await peer.wait_for("response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    await peer.wait_for("output_audio_buffer.cleared")
    types = peer.types()
    assert types.index("response.done") < types.index("output_audio_buffer.cleared")


async def test_no_interrupt_when_interrupt_response_is_off(standin: StandIn) -> None:
    peer = await connect(
        standin,
        {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "interrupt_response": False,
                        "create_response": False,
                    }
                }
            },
        },
    )
    peer.send(
        {
            "type": "response.create",
            "response": {"instructions": "Say: " + "keep talking while I talk " * 3},
        }
    )
    await peer.wait_for("output_audio_buffer.started")
    peer.mic.play(speech("hello", pad_s=1.0))
    await peer.wait_for("input_audio_buffer.speech_started", within=5)
    done = await peer.wait_for("response.done", within=20)
    assert done["response"]["status"] == "completed"
    await peer.wait_for("input_audio_buffer.committed", within=5)
    assert peer.types().count("response.created") == 1, "create_response off: no new response"
    await peer.close()


async def test_function_call_round_trip(standin: StandIn) -> None:
    peer = await connect(standin, {"type": "realtime", "tools": [GET_TIME]})
    peer.ask("what time is it")
    item = (await peer.wait_for("response.output_item.done"))["item"]
    assert (item["type"], item["status"], item["name"]) == (
        "function_call",
        "completed",
        "get_time",
    )
    args = await peer.wait_for("response.function_call_arguments.done")
    assert args["call_id"] == item["call_id"]
    await peer.wait_for("response.done")
    wrong = peer.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_x", "output": "{}"},
        }
    )
    assert (await peer.wait_for("error"))["error"]["event_id"] == wrong
    peer.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": item["call_id"],
                "output": '{"time": "10:42"}',
            },
        }
    )
    peer.send({"type": "response.create"})
    done = await peer.wait_for("response.output_audio_transcript.done", within=15)
    assert "10:42" in done["transcript"]
    await peer.close()


async def test_out_of_band_response(peer: GaPeer) -> None:
    peer.send(
        {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "metadata": {"purpose": "timer"},
                "instructions": "Say: your timer is done",
                "output_modalities": ["text"],
            },
        }
    )
    done = await peer.wait_for("response.done")
    assert done["response"]["metadata"] == {"purpose": "timer"}
    assert done["response"]["conversation_id"] is None
    assert (await peer.wait_for("response.output_text.done"))["text"] == "your timer is done"
    assert "conversation.item.added" not in peer.types(), "not added to the conversation"


async def test_transcription_and_idle_timeout(standin: StandIn) -> None:
    peer = await connect(
        standin,
        {
            "type": "realtime",
            "audio": {
                "input": {
                    "transcription": {"model": "gpt-realtime-whisper"},
                    "turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000},
                }
            },
        },
    )
    peer.mic.play(speech("what is the weather like on the moon", pad_s=1.0))
    completed = await peer.wait_for(
        "conversation.item.input_audio_transcription.completed", within=10
    )
    assert completed["transcript"] == "what is the weather like on the moon"
    await peer.wait_for("output_audio_buffer.stopped", within=20)
    timeout = await peer.wait_for("input_audio_buffer.timeout_triggered", within=8)
    assert timeout["audio_end_ms"] >= timeout["audio_start_ms"]
    transcript = await peer.wait_for("response.output_audio_transcript.done", count=2, within=15)
    assert "still there" in transcript["transcript"]
    await peer.close()


async def test_session_cap_ends_with_session_expired() -> None:
    async with StandIn(StandInConfig(api_key=API_KEY, max_session_s=1.0)) as standin:
        peer = await connect(standin)
        error = (await peer.wait_for("error", within=5))["error"]
        assert error["code"] == "session_expired"
        await asyncio.wait_for(peer.closed.wait(), 10)
        await peer.close()


async def test_fault_drop_mid_reply_and_stall(standin: StandIn) -> None:
    peer = await connect(standin)
    standin.faults.drop_after_audio_ms = 500
    peer.send({"type": "response.create", "response": {"instructions": "Say: " + "words " * 30}})
    await asyncio.wait_for(peer.closed.wait(), 10)
    assert "response.done" not in peer.types()
    await peer.close()
    standin.faults.drop_after_audio_ms = None
    standin.faults.stall_events = True
    peer = GaPeer(standin.base_url, await mint(standin.base_url))
    assert (await peer.connect()).status_code == 201
    with pytest.raises(TimeoutError):
        await peer.wait_for("session.created", within=1.5)
    await peer.close()


async def test_malformed_and_unknown_client_events_get_errors(peer: GaPeer) -> None:
    peer.channel.send("{not json")
    assert (await peer.wait_for("error"))["error"]["code"] == "invalid_json"
    peer.channel.send('{"type": "response.dance", "event_id": "e9"}')
    error = (await peer.wait_for("error", count=2))["error"]
    assert (error["code"], error["event_id"]) == ("invalid_value", "e9")
    peer.send({"type": "response.create", "response": {"instructions": "Say: still fine"}})
    await peer.wait_for("response.done", within=10)


async def test_semantic_vad_is_accepted_and_ends_turns(standin: StandIn) -> None:
    peer = await connect(
        standin,
        {
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}},
        },
    )
    assert peer.events[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    peer.mic.play(speech("what is the weather like on the moon", pad_s=1.0))
    await peer.wait_for("input_audio_buffer.speech_stopped", within=10)
    await peer.wait_for("response.done", within=20)
    await peer.close()


async def test_assets_voice_works_without_espeak() -> None:
    async with StandIn(StandInConfig(api_key=API_KEY, tts="assets")) as standin:
        assert standin.voice.engine == "assets"
        peer = await connect(standin)
        peer.send(
            {
                "type": "response.create",
                "response": {"instructions": "Say: on the moon it is very cold"},
            }
        )
        await peer.wait_for("output_audio_buffer.stopped", within=20)
        call = next(iter(standin.calls.values()))
        assert sum(chunk.size for chunk in call.track.sent) > 48_000, "a shipped clip was played"
        await peer.close()

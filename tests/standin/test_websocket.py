"""The WebSocket transport: the ``openai`` SDK's ``realtime.connect`` runs a voice turn against
the stand-in, and a sideband socket (``?call_id=``) joins a WebRTC call."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.exceptions import InvalidStatus

from standin import StandIn
from standin.media import decode_wire, encode_wire, wire_rate
from tests.peer import GaPeer
from tests.speech import speech
from tests.standin.conftest import API_KEY, mint
from tests.wire import validate_client, validate_server

pytestmark = pytest.mark.slow  # a WebRTC call in real time

MODEL = "gpt-realtime-2.1"


def client(standin: StandIn, key: str = API_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{standin.base_url}/v1", api_key=key, max_retries=0)


async def events_until(
    connection: AsyncRealtimeConnection, kind: str, into: list[dict[str, Any]]
) -> dict[str, Any]:
    """Read raw server events (validating each) until one of type ``kind``; return it."""
    while True:
        event: dict[str, Any] = json.loads(await connection.recv_bytes())
        validate_server(event)
        into.append(event)
        if event["type"] == kind:
            return event


@pytest.fixture
async def connection(standin: StandIn) -> AsyncIterator[AsyncRealtimeConnection]:
    async with client(standin).realtime.connect(model=MODEL) as conn:
        yield conn


@pytest.mark.parametrize("audio_format", ["audio/pcm", "audio/pcmu", "audio/pcma"])
async def test_the_sdk_runs_a_voice_turn_over_a_websocket(
    standin: StandIn, connection: AsyncRealtimeConnection, audio_format: str
) -> None:
    events: list[dict[str, Any]] = []
    created = await events_until(connection, "session.created", events)
    assert created["session"]["model"] == MODEL
    fmt: Any = {"type": audio_format, **({"rate": 24_000} if audio_format == "audio/pcm" else {})}
    await connection.session.update(
        session={
            "type": "realtime",
            "model": MODEL,
            "instructions": "Answer briefly.",
            "audio": {"input": {"format": fmt}, "output": {"format": fmt}},
        }
    )
    await events_until(connection, "session.updated", events)
    rate = wire_rate(audio_format)
    question = speech("what is the weather like on the moon", rate=rate, pad_s=1.0)
    for start in range(0, question.size, rate // 10):  # 100 ms a message, faster than real time
        chunk = encode_wire(question[start : start + rate // 10], audio_format)
        await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
    done = await events_until(connection, "response.done", events)
    assert done["response"]["status"] == "completed"

    types = [e["type"] for e in events]
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.done",
    ]
    assert [types.index(kind) for kind in order] == sorted(types.index(kind) for kind in order)
    assert not [t for t in types if t.startswith("output_audio_buffer.")], "WebRTC-only events"
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert "moon" in transcript["transcript"]
    audio = decode_wire(
        b"".join(
            base64.b64decode(e["delta"])
            for e in events
            if e["type"] == "response.output_audio.delta"
        ),
        audio_format,
    )
    assert audio.size > rate, "more than a second of audio"
    assert np.sqrt(np.mean(audio.astype(float) ** 2)) > 300, "speech, not silence"
    (call,) = standin.calls.values()
    assert call.received, "the stand-in saw the SDK's events"
    for event in call.received:
        validate_client(event)


async def test_an_ephemeral_key_opens_its_own_session(standin: StandIn) -> None:
    key = await mint(
        standin.base_url, {"type": "realtime", "model": MODEL, "instructions": "Be a pirate."}
    )
    async with client(standin, key).realtime.connect(model=MODEL) as conn:
        created = await events_until(conn, "session.created", [])
    assert created["session"]["instructions"] == "Be a pirate."


async def test_a_bad_key_is_refused_at_the_handshake(standin: StandIn) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with client(standin, "sk-wrong").realtime.connect(model=MODEL) as conn:
            await conn.recv()
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"")["error"]["code"] == "invalid_api_key"


async def test_the_sideband_joins_a_webrtc_call_and_controls_it(standin: StandIn) -> None:
    peer = GaPeer(standin.base_url, await mint(standin.base_url))
    await peer.connect()
    try:
        await peer.wait_for("session.created")
        assert peer.call_id is not None
        sideband = client(standin).realtime.connect(call_id=peer.call_id)
        async with sideband as conn:
            await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
            seen: list[dict[str, Any]] = []
            updated = await events_until(conn, "session.updated", seen)
            assert updated["session"]["instructions"] == "Be brief."
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello there"}],
                }
            )
            await conn.response.create()
            await events_until(conn, "response.done", seen)
        # the device side heard the same events, audio included
        await peer.wait_for("response.done")
        await peer.wait_for("output_audio_buffer.stopped")
        assert "session.updated" in peer.types()
        (call,) = standin.calls.values()
        for event in call.received:
            validate_client(event)
    finally:
        await peer.close()


async def test_a_sideband_needs_a_known_call_and_the_standard_key(standin: StandIn) -> None:
    with pytest.raises(InvalidStatus) as unknown:
        async with client(standin).realtime.connect(call_id="rtc_nope") as conn:
            await conn.recv()
    assert unknown.value.response.status_code == 404
    key = await mint(standin.base_url)
    with pytest.raises(InvalidStatus) as ephemeral:
        async with client(standin, key).realtime.connect(call_id="rtc_nope") as conn:
            await conn.recv()
    assert ephemeral.value.response.status_code == 401


async def session_events_until(session: Any, kind: str, into: list[Any], *, count: int = 1) -> Any:
    """Read ``RealtimeSession`` events until the ``count``-th of type ``kind``."""
    async for event in session:
        into.append(event)
        if [e.type for e in into].count(kind) >= count:
            return event
    raise AssertionError(f"the session ended before {kind}")


async def test_the_agents_realtime_runner_talks_and_calls_a_tool(standin: StandIn) -> None:
    """openai-agents' ``RealtimeRunner`` validates every server event strictly (a failure is an
    ``error`` session event) and runs tools on its own."""
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    @function_tool
    def get_time() -> str:
        """The current local time."""
        return json.dumps({"time": "twelve o'clock"})

    agent: RealtimeAgent[Any] = RealtimeAgent(
        name="Helper", instructions="Answer briefly.", tools=[get_time]
    )
    url = standin.base_url.replace("http://", "ws://") + f"/v1/realtime?model={MODEL}"
    session = await RealtimeRunner(agent).run(model_config={"api_key": API_KEY, "url": url})
    events: list[Any] = []
    async with session:
        question = speech("what is the weather like on the moon", rate=24_000, pad_s=1.0)
        await session.send_audio(question.astype("<i2").tobytes())
        await session_events_until(session, "agent_end", events)
        await session.send_message("what time is it")
        await session_events_until(session, "tool_end", events)
        # the tool call's response ends, then the one that speaks its output
        await session_events_until(session, "agent_end", events, count=3)
    errors = [e for e in events if e.type == "error"]
    assert errors == [], errors
    tool_end = next(e for e in events if e.type == "tool_end")
    assert tool_end.tool.name == "get_time"
    assert [e for e in events if e.type == "audio"], "the reply's audio reached the runner"
    raw = [
        e.data for e in events if e.type == "raw_model_event" and e.data.type == "raw_server_event"
    ]
    spoken = [
        d.data["transcript"]
        for d in raw
        if d.data["type"] == "response.output_audio_transcript.done"
    ]
    assert any("moon" in said for said in spoken), spoken
    assert any("twelve o'clock" in said for said in spoken), spoken
    call = standin.finished_calls[-1]
    for event in call.received:
        validate_client(event)
    for event in call.sent:
        validate_server(event)


def test_g711_bytes_are_the_standard_codes() -> None:
    """Silence is 0xFF in mu-law and 0xD5 in A-law (ITU-T G.711), both ways."""
    silence = np.zeros(8, dtype=np.int16)
    assert encode_wire(silence, "audio/pcmu") == b"\xff" * 8
    assert encode_wire(silence, "audio/pcma") == b"\xd5" * 8
    assert np.abs(decode_wire(b"\xff" * 8, "audio/pcmu")).max() == 0
    assert np.abs(decode_wire(b"\xd5" * 8, "audio/pcma")).max() <= 8
    loud = decode_wire(b"\x80", "audio/pcmu")  # the largest positive mu-law code
    assert loud.tolist() == [32124]


async def test_a_browser_authenticates_with_subprotocols(standin: StandIn) -> None:
    """Browsers cannot set headers on a WebSocket: the key rides in a subprotocol."""
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    key = await mint(standin.base_url, {"type": "realtime", "model": MODEL})
    url = standin.base_url.replace("http://", "ws://") + f"/v1/realtime?model={MODEL}"
    offered = [Subprotocol("realtime"), Subprotocol(f"openai-insecure-api-key.{key}")]
    async with connect(url, subprotocols=offered) as socket:
        assert socket.subprotocol == "realtime"
        created = json.loads(await socket.recv())
    validate_server(created)
    assert created["type"] == "session.created"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, subprotocols=[Subprotocol("realtime")]):
            pass
    assert refused.value.response.status_code == 401

"""The device's GPT-Live session against a scripted service peer (a second aiortc peer in this
process): what it waits for, what it sends (strict ``openai.types.live.ClientEvent``) and the
machine events the model's turn-taking becomes. Plus its voice detector."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiortc import RTCSessionDescription

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink
from appliance.realtime.live import VOICE_HANG_MS, LiveSession, VoiceGate
from appliance.realtime.media import MicTrack
from appliance_common.ice import PeerConnection, allow_loopback
from standin.media import ReplyTrack, make_track
from tests.waiting import LogWatch, Recorded
from tests.wire_live import validate_live_client, validate_live_server

pytestmark = pytest.mark.slow  # a WebRTC call in real time


class ScriptedService:
    """Answers the device's offer like the Live service and lets the test send any event."""

    def __init__(self) -> None:
        self.pc = PeerConnection()
        self.channel: Any = None
        self.received: list[dict[str, Any]] = []
        self.opened = asyncio.Event()
        self._new = asyncio.Event()

    async def open_live(self, sdp: str, tools: list[dict[str, Any]]) -> tuple[str, str]:
        self.tools = tools
        self.pc.addTrack(make_track(ReplyTrack()))

        @self.pc.on("datachannel")
        def _on_channel(channel: Any) -> None:
            self.channel = channel
            channel.on("message", self._on_message)
            self.opened.set()

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return "live_scripted", str(self.pc.localDescription.sdp)

    def _on_message(self, message: str) -> None:
        data = json.loads(message)
        validate_live_client(data)
        self.received.append(data)
        self._new.set()

    def send(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "event_id": f"evt_{len(self.received)}_{time.monotonic_ns()}"}
        event.update(fields)
        validate_live_server(event)
        self.channel.send(json.dumps(event))
        return event

    async def wait_for(self, kind: str, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            matching = [e for e in self.received if e["type"] == kind]
            if len(matching) >= count:
                return matching[count - 1]
            assert time.monotonic() < deadline, f"no {kind}; got {self.received}"
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), deadline - time.monotonic())
            except TimeoutError:
                continue


def started(session_id: str = "live_scripted") -> dict[str, Any]:
    return {
        "id": session_id,
        "expires_at": int(time.time()) + 3600,
        "model": "gpt-live-1",
        "status": "active",
        "delegation": {"type": "client"},
    }


@dataclass
class Pair:
    session: LiveSession
    service: ScriptedService
    events: Recorded[m.Event] = field(default_factory=Recorded)
    transcripts: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
async def pair(logwatch: LogWatch) -> AsyncIterator[Pair]:
    allow_loopback()
    service = ScriptedService()
    events: Recorded[m.Event] = Recorded()
    transcripts: list[tuple[str, str]] = []
    session = LiveSession(
        relay=service,
        tools=[{"type": "function", "name": "get_time", "parameters": {"type": "object"}}],
        mic=MicTrack(AudioFormat(16_000)),
        sink=WavSink(None, AudioFormat(48_000)),
        on_event=events.append,
        on_transcript=lambda role, text: transcripts.append((role, text)),
        liveness_s=0,
    )
    connecting = asyncio.create_task(session.connect())
    await asyncio.wait_for(service.opened.wait(), 10)
    service.send("info", code="before_start", message="the device reads the channel already")
    await logwatch.wait_for("live notice before_start")  # a later event: the window passed
    assert not connecting.done(), "connect() waits for session.started"
    assert service.received == [], "nothing is sent before session.started"
    service.send("session.started", session=started())
    await asyncio.wait_for(connecting, 10)
    yield Pair(session, service, events, transcripts)
    await session.close()
    await service.pc.close()


async def test_after_session_started_the_closed_uplink_mutes_the_input(
    pair: Pair,
) -> None:
    session, service = pair.session, pair.service
    assert session.call_id == "live_scripted"
    assert session.resource["model"] == "gpt-live-1"
    assert service.tools[0]["name"] == "get_time", "the device's tools went to the relay"
    await service.wait_for("session.input_audio.mute")
    session.set_uplink(True)
    session.set_uplink(True)  # no duplicate
    await service.wait_for("session.input_audio.unmute")
    session.commit_input()  # push-to-talk released
    await service.wait_for("session.input_audio.mute", count=2)
    assert [e["type"] for e in service.received] == [
        "session.input_audio.mute",
        "session.input_audio.unmute",
        "session.input_audio.mute",
    ]


async def test_the_models_turns_become_machine_events(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    session, service, events = pair.session, pair.service, pair.events
    caplog.set_level(logging.INFO, logger="appliance.realtime.live")
    for delta in ("what", " time", " is it"):
        service.send("session.input_transcript.delta", delta=delta, start_ms=0, end_ms=10)
    delegation = {"id": "dlg_1", "target": "client", "type": "delegation"}
    service.send("session.delegation.created", delegation=delegation, offset_ms=20)
    answer = await service.wait_for("session.commentary.append")
    assert answer["delegation_id"] == "dlg_1"
    call = {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_time",
        "arguments": "{}",
        "status": "completed",
    }
    nested = {"type": "response.output_item.done", "output_index": 0, "item": call}
    service.send("response.event", event=nested, delegation_id="dlg_2")
    done = {"type": "response.completed", "response": {"id": "resp_2", "status": "completed"}}
    service.send("response.event", event=done, delegation_id="dlg_2")
    error = {
        "type": "invalid_request_error",
        "code": "unknown_delegation",
        "message": "no such delegation",
        "client_event_id": answer["event_id"],
    }
    service.send("error", error=error, client_event_id=answer["event_id"])
    service.send("info", code="data_channel_permissions", message="limited")
    service.channel.send(json.dumps({"type": "session.something_new", "event_id": "x"}))
    usage = {"seconds": 5.0, "active_seconds": 4, "paused_seconds": 1}
    service.send("session.usage.updated", usage=usage)
    service.send("session.closed", reason="expired", session=started(), usage=usage)
    await events.first(lambda e: isinstance(e, m.SessionLost), f"the end; got {events}")
    assert events == [
        m.SpeechStarted(),
        m.ResponseStarted("dlg_1"),
        m.ResponseDone("dlg_1", "completed", had_audio=True),  # answered; the voice follows
        m.ToolCallRequested("call_1", "get_time", "{}"),
        m.ResponseDone("resp_2", "completed", had_audio=True),
        m.SessionLost("session closed: expired"),
    ]
    assert pair.transcripts == [("user", "what time is it")]
    assert session.usage == usage
    log = caplog.text
    assert "unknown_delegation" in log
    assert "session.commentary.append" in log, "the error names the event that caused it"
    assert "data_channel_permissions" in log
    assert "session.something_new" in log


async def test_tool_results_continue_the_backend_only_when_there_are_some(
    pair: Pair,
) -> None:
    session, service = pair.session, pair.service
    await service.wait_for("session.input_audio.mute")
    session.request_response()  # nothing to continue: the model decides itself
    session.send_tool_output("call_1", '{"time": "12:00"}')
    session.request_response()
    await service.wait_for("response.create")
    kinds = [e["type"] for e in service.received]
    assert kinds == ["session.input_audio.mute", "response.item.create", "response.create"]
    item = service.received[1]["item"]
    assert item == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"time": "12:00"}',
    }


async def test_the_voice_gate_follows_the_models_voice_and_drops_an_interrupted_reply() -> None:
    sink = WavSink(None, AudioFormat(48_000))
    seen: list[bool] = []
    gate = VoiceGate(sink, seen.append)
    frame_samples = sink.format.frame_bytes // 2
    loud = (np.sin(np.arange(frame_samples) / 5) * 8000).astype(np.int16).tobytes()
    quiet = bytes(sink.format.frame_bytes)
    await gate.write(quiet)
    await gate.write(loud)
    assert seen == [True]
    gate.dropping = True  # the user interrupted
    await gate.write(loud)
    hang = VOICE_HANG_MS // sink.format.frame_ms
    for _ in range(hang - 1):
        await gate.write(quiet)
    assert seen == [True], "short pauses between words are not the end"
    await gate.write(quiet)
    assert seen == [True, False]
    assert not gate.dropping, "the next reply plays again"
    assert sink.frames.count(loud) == 1, "the interrupted voice never reached the speaker"
    assert len(sink.frames) == 3, "only the silence around it did"

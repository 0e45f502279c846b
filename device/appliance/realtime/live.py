"""The GPT-Live client: one ``LiveSession`` is one Live WebRTC session (``openai.types.live``).

connect(): peer connection (audio sendrecv + data channel) → offer → our provisioning server's
relay (device JWT; it adds the group's config and the project key, which the device never sees)
→ answer → wait for ``session.started`` before anything else → ready.

GPT-Live decides itself when to speak and when to stop, so the device reads the model's
turn-taking rather than asking for responses. It maps what it sees to the machine events the
Realtime session uses (one machine for both backends):

- ``session.input_transcript.delta``: the user is talking (``SpeechStarted``); the text goes to
  the journal and dictation when the user's turn ends.
- ``session.delegation.created``: the model has taken its turn and handed work off
  (``ResponseStarted``: THINKING). Client delegations carry no task text (the type says so), so
  the device answers them with ``session.commentary.append`` (``ResponseDone``). A Responses
  delegation is done at the backend's nested ``response.completed`` (failed, incomplete). Under
  Responses delegation the device's function tools (declared to the relay) are called by the
  backend: a nested ``function_call`` arrives in ``response.event`` (``ToolCallRequested``); the
  result goes back with ``response.item.create`` + ``response.create``.
- the model's voice on the RTP track: ``ResponseStarted`` + ``ReplyAudioStarted`` when it starts
  (SPEAKING), ``ResponseDone`` + ``ReplyAudioStopped`` after ``VOICE_HANG_MS`` of silence.
  ``session.output_transcript.delta`` fills the assistant's transcript.
- ``session.closed`` (expired, content, hang-up, lost): ``SessionLost`` (reconnect, carry over).

Input mute follows the uplink: closed (idle, thinking, speaking, privacy mute, push-to-talk
released) sends ``session.input_audio.mute``, open sends ``session.input_audio.unmute``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from aiortc import RTCSessionDescription

from appliance import machine as m
from appliance.audio.base import AudioSink, SinkWrapper
from appliance.realtime.keys import EphemeralKey
from appliance.realtime.media import MicTrack
from appliance.realtime.webrtc import RealtimeSession

log = logging.getLogger(__name__)
JSON = dict[str, Any]
VOICE_HANG_MS = 600
"""Silence on the model's track after which its turn is over (words pause for less)."""
VOICE_RMS = 200.0
"""Frame RMS (s16) above which the model's track carries voice (the service sends silence)."""
CLIENT_DELEGATION_ANSWER = (
    "This device cannot do that task itself; tell the user briefly that it is not available."
)
MAX_CONTEXT_CHARS = 1500
"""Carried-over history as one ``session.instructions.append`` (the event allows 500 tokens)."""


class LiveRelay(Protocol):
    """Where a Live session is opened: our provisioning server (``ProvisioningKeySource``)."""

    async def open_live(self, sdp: str, tools: list[JSON]) -> tuple[str, str]:
        """``(session id, answer SDP)`` for ``sdp``; raises ``ProvisioningError`` subclasses."""
        ...


class _Unused:
    """The Realtime key path is not used by a Live session (no ephemeral keys)."""

    async def get_key(self) -> EphemeralKey:
        raise RuntimeError("GPT-Live has no ephemeral keys")


class VoiceGate(SinkWrapper):
    """Watches the model's audio on its way to the speaker: says when voice starts and stops,
    and drops a reply the user interrupted until the model falls silent."""

    def __init__(
        self, sink: AudioSink, on_voice: Callable[[bool], None], hang_ms: int = VOICE_HANG_MS
    ) -> None:
        super().__init__(sink)
        self._on_voice = on_voice
        self._hang_frames = max(1, hang_ms // max(1, sink.format.frame_ms))
        self.voice = False
        self._quiet = 0
        self.dropping = False

    async def write(self, frame: bytes) -> None:
        samples = np.frombuffer(frame, dtype=np.int16).astype(np.float32)
        loud = bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) > VOICE_RMS
        if loud:
            self._quiet = 0
            if not self.voice:
                self.voice = True
                self._on_voice(True)
        elif self.voice:
            self._quiet += 1
            if self._quiet >= self._hang_frames:
                self.voice = False
                self.dropping = False
                self._on_voice(False)
        if not self.dropping:
            await self.sink.write(frame)


class LiveSession(RealtimeSession):
    """One GPT-Live session. Not reusable: make a new one to reconnect. Shares the Realtime
    session's peer-connection plumbing (liveness, playout, loss handling, close)."""

    backend = "live"

    def __init__(
        self,
        *,
        relay: LiveRelay,
        tools: list[JSON],
        mic: MicTrack,
        sink: AudioSink,
        on_event: Callable[[m.Event], None],
        on_transcript: Callable[[str, str], None] | None = None,
        started_timeout_s: float = 10.0,
        liveness_s: float = 5.0,
    ) -> None:
        self.gate = VoiceGate(sink, self._on_voice)
        super().__init__(
            keys=_Unused(),
            session={},
            mic=mic,
            sink=self.gate,
            on_event=on_event,
            on_transcript=on_transcript,
            liveness_s=liveness_s,
        )
        self._relay = relay
        self._tools = tools
        self._started_timeout_s = started_timeout_s
        self.resource: JSON = {}
        """``session.started``'s resolved session (model, voice, delegation, expiry)."""
        self.muted: bool | None = None
        """The input mute last asked for (``None``: never)."""
        self.usage: JSON = {}
        """The latest ``session.usage.updated``: seconds, active_seconds, paused_seconds."""
        self.heard = ""
        """The user's words of the current turn so far."""
        self._user_talking = False
        self._reply_n = 0
        self._reply_id: str | None = None
        self._tool_outputs = 0
        """``function_call_output`` items sent since the last ``response.create``."""
        self._closed_by_us = False
        self._announcing = False

    # ------------------------------------------------------------------ connect / close

    async def connect(self) -> None:
        """Open the session through the relay and wait for ``session.started``."""
        started = time.perf_counter()
        offer = await self._offer()
        self.call_id, answer = await self._relay.open_live(offer, self._tools)
        self.timings["answer_s"] = time.perf_counter() - started
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(
            self._wait(self._created, "session.started"), self._started_timeout_s
        )
        self.timings["created_s"] = self.timings["ready_s"] = time.perf_counter() - started
        self.opened_at = time.monotonic()
        self.set_uplink(self.mic.uplink_open)
        if self.liveness_s > 0:
            self._watch_task = asyncio.create_task(self._watch(), name="liveness")
        log.info(
            "live session ready in %.0f ms (%s)",
            self.timings["ready_s"] * 1000,
            self.call_id,
            extra={"call_id": self.call_id, "latency_ms": round(self.timings["ready_s"] * 1000)},
        )

    async def close(self) -> None:
        if not self._closing and self._channel is not None:
            self._closed_by_us = True
            self.send({"type": "session.close"})
        await super().close()

    def _probe(self) -> None:
        """Repeat the input mute state: the service acknowledges it (a device may not send
        ``session.update``: the relay's data-channel permissions)."""
        muted = bool(self.muted)
        self.send({"type": "session.input_audio.mute" if muted else "session.input_audio.unmute"})

    # ------------------------------------------------------------------ sending

    def send(self, event: JSON) -> None:
        event.setdefault("event_id", f"dev_{time.monotonic_ns():x}")
        super().send(event)

    def set_uplink(self, open_: bool) -> None:
        """Mirror the uplink into the model's input mute (privacy, push-to-talk, idle)."""
        if self.muted is (not open_):
            return
        self.muted = not open_
        self.send({"type": "session.input_audio.unmute" if open_ else "session.input_audio.mute"})

    def commit_input(self) -> None:
        """Push-to-talk released: mute the input, which ends the user's turn at once."""
        self.set_uplink(False)

    def set_turn_detection(self, server_vad: bool) -> None:
        """The model takes turns itself; push-to-talk is input mute (``commit_input``)."""

    def request_response(self, **kwargs: Any) -> None:
        """Continue a delegated Responses turn once tool results were sent; otherwise the
        model decides itself when to answer."""
        if self._tool_outputs:
            self._tool_outputs = 0
            self.send({"type": "response.create"})

    def send_tool_output(self, call_id: str, output: str) -> None:
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        self.send({"type": "response.item.create", "item": item})
        self._tool_outputs += 1

    def announce(self, kind: str, instructions: str) -> None:
        """Something for the model to tell the user (timer, reconnect): speakable context.
        What it says next is logged as an announcement, not carried over."""
        self._announcing = True
        self.send(
            {"type": "session.commentary.append", "delegation_id": None, "content": instructions}
        )

    def send_image(self, url: str) -> None:
        """A camera photo for the Responses backend (``response.item.create``: an input image
        in a user message). Without Responses delegation the service refuses it (logged)."""
        content = [{"type": "input_image", "image_url": url, "detail": "auto"}]
        item = {"type": "message", "role": "user", "content": content}
        self.send({"type": "response.item.create", "item": item})

    def seed(self, history: list[tuple[str, str]]) -> None:
        """Carry a conversation over into this new session, as appended instructions."""
        lines = [f"{role}: {text}" for role, text in history]
        while lines and sum(len(line) + 1 for line in lines) > MAX_CONTEXT_CHARS:
            lines.pop(0)
        if lines:
            content = "Earlier in this conversation (before a reconnect):\n" + "\n".join(lines)
            self.send(
                {"type": "session.instructions.append", "delegation_id": None, "content": content}
            )

    def interrupt(self) -> None:
        """Barge-in by button: silence the speaker now; the model yields when the user talks."""
        if self.gate.voice:
            self.gate.dropping = True
        self.gate.flush()

    # ------------------------------------------------------------------ receiving

    def _user_turn_over(self) -> None:
        if self.heard and self._on_transcript:
            self._on_transcript("user", self.heard.strip())
        self.heard = ""
        self._user_talking = False

    def _on_voice(self, voice: bool) -> None:
        """The model's voice started or stopped on the track (its own turn-taking)."""
        if voice:
            self._user_turn_over()
            self._reply_n += 1
            self._reply_id = f"live_reply_{self._reply_n}"
            self._on_event(m.ResponseStarted(self._reply_id))
            self._on_event(m.ReplyAudioStarted(self._reply_id))
            return
        reply = self._reply_id or "live_reply"
        if self.partial_reply and self._on_transcript:
            role = "announcement" if self._announcing else "assistant"
            self._on_transcript(role, self.partial_reply.strip())
        self.partial_reply = ""
        self._announcing = False
        # as on Realtime (response.done, then output_audio_buffer.stopped): the reply is over
        # once its audio stops, not back to THINKING in between
        self._on_event(m.ResponseDone(reply, "completed", had_audio=True))
        self._on_event(m.ReplyAudioStopped(reply))

    def _track(self, data: JSON) -> None:
        kind = data["type"]
        if kind == "session.started":
            self.resource = dict(data["session"])
            self._created.set()
        elif kind == "session.input_transcript.delta":
            self.heard += str(data["delta"])
            if not self._user_talking:
                self._user_talking = True
                self._announcing = False
                self._on_event(m.SpeechStarted())
        elif kind == "session.output_transcript.delta":
            self.partial_reply += str(data["delta"])
        elif kind == "session.delegation.created":
            delegation = data["delegation"]
            self._user_turn_over()
            self._on_event(m.ResponseStarted(str(delegation["id"])))
            if delegation["target"] == "client":
                self.send(
                    {
                        "type": "session.commentary.append",
                        "delegation_id": str(delegation["id"]),
                        "content": CLIENT_DELEGATION_ANSWER,
                    }
                )
                # the device's part is done; the model's spoken answer is still to come
                self._on_event(m.ResponseDone(str(delegation["id"]), "completed", had_audio=True))
        elif kind == "response.event":
            self._on_backend_event(data["event"])
        elif kind == "session.usage.updated":
            self.usage = dict(data["usage"])
        elif kind == "session.closed":
            self.usage = dict(data["usage"])
            if not self._closed_by_us:
                self._lose(f"session closed: {data['reason']}")
        elif kind == "error":
            error = data["error"]
            log.warning(
                "live error %s: %s (caused by %s)",
                error.get("code"),
                error.get("message"),
                self._sent.cause(error.get("client_event_id")) or "an unknown event",
                extra={"error_code": error.get("code"), "call_id": self.call_id},
            )
        elif kind == "info":
            log.info("live notice %s: %s", data.get("code"), data.get("message"))
        elif kind not in _KNOWN:
            log.info("ignoring unknown server event %r", kind)

    def _on_backend_event(self, nested: JSON) -> None:
        """A Responses event from the delegated backend: its function calls, and its end (the
        machine asks for the answer to tool outputs once the response is done; the model's
        spoken answer is still to come)."""
        if nested.get("type") in _BACKEND_DONE:
            response = nested.get("response") or {}
            status = str(response.get("status") or _BACKEND_DONE[nested["type"]])
            self._on_event(m.ResponseDone(str(response.get("id")), status, had_audio=True))
            return
        if nested.get("type") != "response.output_item.done":
            return
        item = nested.get("item") or {}
        if item.get("type") == "function_call" and item.get("status", "completed") == "completed":
            self._on_event(
                m.ToolCallRequested(
                    str(item["call_id"]), str(item["name"]), str(item.get("arguments") or "{}")
                )
            )


_BACKEND_DONE = {
    "response.completed": "completed",
    "response.failed": "failed",
    "response.incomplete": "incomplete",
}
_KNOWN = {
    "session.updated",
    "session.input_audio.muted",
    "session.input_audio.unmuted",
    "session.commentary.appended",
    "session.thinking.appended",
    "session.instructions.appended",
}

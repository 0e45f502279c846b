"""One call to the stand-in: the GA event engine, server VAD and the scripted model.

Order of events follows the reference §4.3. Everything the stand-in sends is also kept in
``Call.sent`` (and everything received in ``Call.received``) so tests can validate the wire.

Transports: a WebRTC call (``answer``) carries events on the ``oai-events`` data channel and
audio on RTP; a WebSocket session (``media="websocket"``, ``start``) carries both as events
through an *outlet*. More outlets may ``attach`` (the sideband, ``?call_id=``); each receives
every server event, and client events from any of them go through ``receive``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import webrtcvad
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from pydantic_core import from_json, to_json

from appliance_common.ice import PeerConnection
from appliance_common.opus import ask_for_opus_fec
from appliance_common.pcm import Pcm, Resampler
from standin import events as ev
from standin.media import (
    RATE,
    DeltaAudio,
    ReplyAudio,
    ReplyTrack,
    answer_codecs,
    decode_wire,
    make_track,
    sending_codec,
    wire_rate,
)
from standin.script import Decision, Script

if TYPE_CHECKING:
    from standin.server import Faults
    from standin.voice import Voice

log = logging.getLogger(__name__)
JSON = dict[str, Any]
VAD_RATE = 16_000
VAD_FRAME = 320  # 20 ms
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 400}
DEFAULT_THEN_SAY = "Done: {output}."
DEFAULT_PREAMBLE = "Let me check."
"""Said before a tool call when the session asks for reasoning (a reasoning model's habit)."""
SEGMENT_WORDS = 4
"""Words per diarized transcription segment (a word taken as 0.4 s of speech)."""
TOKENS_PER_WORD = 5
"""What a spoken word costs under ``max_output_tokens`` (its text and ~200 ms of audio)."""
SESSION_KEYS = {
    "type",
    "reasoning",
    "parallel_tool_calls",
    "model",
    "output_modalities",
    "instructions",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "tracing",
    "truncation",
    "prompt",
    "include",
    "audio",
}
VOICES = {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}


class SessionUpdateError(ValueError):
    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def merge(base: JSON, update: JSON) -> JSON:
    """Partial update: nested dicts merge, everything else (incl. ``null``) replaces. Neither
    argument is changed; the result shares nothing with them."""
    return _merge_into(json_copy(base), json_copy(update))


def json_copy(value: JSON) -> JSON:
    """A deep copy of a JSON object (through pydantic-core: a quarter of ``deepcopy``'s time)."""
    copied: JSON = from_json(to_json(value))
    return copied


def _merge_into(out: JSON, update: JSON) -> JSON:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "turn_detection":
            _merge_into(out[key], value)
        else:
            out[key] = value
    return out


def apply_session_update(current: JSON, update: JSON, voice_locked: bool) -> JSON:
    """Validate and apply a ``session.update`` (or a client_secrets ``session``)."""
    if update.get("type") not in ("realtime", "transcription"):
        raise SessionUpdateError(
            "Missing required parameter: 'session.type'.",
            "session.type",
            "missing_required_parameter",
        )
    if update["type"] != current.get("type"):
        raise SessionUpdateError("The session type cannot be changed.", "session.type")
    unknown = set(update) - SESSION_KEYS
    if unknown:
        name = sorted(unknown)[0]
        raise SessionUpdateError(
            f"Unknown parameter: 'session.{name}'.", f"session.{name}", "unknown_parameter"
        )
    if "model" in update and current.get("model") not in (None, update["model"]):
        raise SessionUpdateError("The model of a session cannot be changed.", "session.model")
    audio = update.get("audio") or {}
    out_audio = audio.get("output") or {}
    voice = out_audio.get("voice")
    if voice is not None:
        if isinstance(voice, str) and voice not in VOICES:
            raise SessionUpdateError(f"Invalid value: '{voice}'.", "session.audio.output.voice")
        old = current.get("audio", {}).get("output", {}).get("voice")
        if voice_locked and voice != old:
            raise SessionUpdateError(
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice",
                "cannot_update_voice",
            )
    speed = out_audio.get("speed")
    if speed is not None and not (0.25 <= float(speed) <= 1.5):
        raise SessionUpdateError("speed must be between 0.25 and 1.5", "session.audio.output.speed")
    if "input" in audio and audio["input"] and "turn_detection" in audio["input"]:
        validate_turn_detection(audio["input"]["turn_detection"])
    validate_features(update)
    modalities = update.get("output_modalities")
    if modalities is not None and modalities not in (["audio"], ["text"]):
        raise SessionUpdateError(
            "output_modalities must be ['audio'] or ['text']", "session.output_modalities"
        )
    merged = merge(current, update)
    td = merged.get("audio", {}).get("input", {}).get("turn_detection")
    if isinstance(td, dict) and td.get("type") == "server_vad":
        merged["audio"]["input"]["turn_detection"] = {**ev.DEFAULT_TURN_DETECTION, **td}
    return merged


EFFORTS = ("minimal", "low", "medium", "high", "xhigh")


def validate_features(update: JSON) -> None:
    """The 2.x session features, with the ranges of the ``openai`` types' docstrings."""
    reasoning = update.get("reasoning")
    if reasoning is not None and (
        not isinstance(reasoning, dict) or reasoning.get("effort", "low") not in EFFORTS
    ):
        raise SessionUpdateError(
            f"reasoning.effort must be one of {', '.join(EFFORTS)}", "session.reasoning.effort"
        )
    parallel = update.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise SessionUpdateError(
            "parallel_tool_calls must be a boolean", "session.parallel_tool_calls"
        )
    cap = update.get("max_output_tokens")
    if cap is not None and cap != "inf" and not (isinstance(cap, int) and 1 <= cap <= 4096):
        raise SessionUpdateError(
            "max_output_tokens must be 1-4096 or 'inf'", "session.max_output_tokens"
        )
    truncation = update.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        ratio = truncation.get("retention_ratio") if isinstance(truncation, dict) else None
        if (
            not isinstance(truncation, dict)
            or truncation.get("type") != "retention_ratio"
            or not isinstance(ratio, int | float)
            or not 0.0 <= ratio <= 1.0
        ):
            raise SessionUpdateError(
                "truncation must be 'auto', 'disabled' or a retention_ratio between 0 and 1",
                "session.truncation",
            )
    noise = ((update.get("audio") or {}).get("input") or {}).get("noise_reduction")
    if noise is not None and (
        not isinstance(noise, dict) or noise.get("type") not in ("near_field", "far_field")
    ):
        raise SessionUpdateError(
            "noise_reduction.type must be near_field or far_field",
            "session.audio.input.noise_reduction.type",
        )


def validate_turn_detection(td: Any) -> None:
    p = "session.audio.input.turn_detection"
    if td is None:
        return
    if not isinstance(td, dict) or td.get("type") not in ("server_vad", "semantic_vad"):
        raise SessionUpdateError(
            "turn_detection.type must be server_vad or semantic_vad", f"{p}.type"
        )
    if td["type"] == "server_vad":
        threshold = td.get("threshold", 0.5)
        if not 0.0 <= float(threshold) <= 1.0:
            raise SessionUpdateError("threshold must be between 0 and 1", f"{p}.threshold")
        idle = td.get("idle_timeout_ms")
        if idle is not None and not 5000 <= int(idle) <= 30000:
            raise SessionUpdateError(
                "idle_timeout_ms must be between 5000 and 30000", f"{p}.idle_timeout_ms"
            )
    elif td.get("eagerness", "auto") not in SEMANTIC_SILENCE_MS:
        raise SessionUpdateError("eagerness must be low, medium, high or auto", f"{p}.eagerness")


@dataclass
class Item:
    data: JSON
    audio_ms: int = 0


@dataclass
class Response:
    id: str
    oob: bool
    metadata: dict[str, str] | None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    item_id: str | None = None
    audio_started: bool = False
    audio_samples: int = 0
    played_at_start: int = 0
    output: list[JSON] = field(default_factory=list)
    budget: int | None = None
    """Output tokens left under ``max_output_tokens`` (``None``: no cap)."""
    cut_short: bool = False
    """The cap cut the response short: it ends ``incomplete`` (``max_output_tokens``)."""


class Call:
    """The stand-in side of one ``/v1/realtime/calls`` call."""

    def __init__(
        self,
        call_id: str,
        session: JSON,
        *,
        voice: Voice,
        script: Script,
        faults: Faults,
        max_session_s: float,
        on_closed: Callable[[Call], None],
        media: Literal["webrtc", "websocket"] = "webrtc",
    ) -> None:
        self.id = call_id
        self.session = session
        self.voice = voice
        self.script = script
        self.faults = faults
        self.max_session_s = max_session_s
        self._on_closed = on_closed
        self.pc: PeerConnection | None = None
        self.track: ReplyAudio = (
            DeltaAudio(self._send, lambda: self._audio_format("output"))
            if media == "websocket"
            else ReplyTrack()
        )
        self._outlets: list[Callable[[JSON], None]] = []
        self.sent: list[JSON] = []
        self.received: list[JSON] = []
        self.items: list[Item] = []
        self.closed = asyncio.Event()
        self._channel: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._response: Response | None = None
        self._last_response_id: str | None = None
        self._voice_locked = False
        self._turn = 0
        self._audio_turn = 0
        self._last_text = ""
        self._last_was_audio = False
        self._pending_calls: dict[str, tuple[str, str]] = {}  # call_id -> (response, then_say)
        self._tool_outputs: list[tuple[str, str]] = []  # (call_id, output) awaiting a response
        # input audio buffer / VAD
        self._audio_ms = 0
        self._buffer_ms = 0
        self._speaking = False
        self._speech_run = 0
        self._silence_ms = 0
        self._speech_item: str | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._cleared: set[str] = set()
        self._expiry_handle: asyncio.TimerHandle | None = None
        self._vad = webrtcvad.Vad()
        self._vad_in = Resampler(VAD_RATE)
        self._vad_pending = np.zeros(0, dtype=np.int16)
        self.started = time.monotonic()

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        """Open a session without a peer connection (WebSocket): ``session.created`` goes to
        the outlets attached so far."""
        self._send(ev.event("session.created", session=self.session))
        self._arm_expiry()

    def attach(self, outlet: Callable[[JSON], None]) -> None:
        """Send every later server event to ``outlet`` too."""
        self._outlets.append(outlet)

    def detach(self, outlet: Callable[[JSON], None]) -> None:
        if outlet in self._outlets:
            self._outlets.remove(outlet)

    def receive(self, message: str | bytes) -> None:
        """A client event from an outlet's transport (a WebSocket text frame)."""
        self._on_message(message)

    def _arm_expiry(self) -> None:
        loop = asyncio.get_running_loop()
        self._expiry_handle = loop.call_later(self.max_session_s, self._expire)

    async def answer(self, offer_sdp: str) -> str:
        """Set the remote offer and return the SDP answer. ``ValueError`` on bad SDP."""
        assert isinstance(self.track, ReplyTrack), "a WebSocket session has no peer connection"
        pc = self.pc = PeerConnection()
        sender = pc.addTrack(make_track(self.track))
        for transceiver in pc.getTransceivers():
            if transceiver.sender is sender:  # the service's codecs, Opus first
                transceiver.setCodecPreferences(answer_codecs())

        @pc.on("datachannel")
        def _on_channel(channel: Any) -> None:
            if channel.label != "oai-events":
                log.warning("call %s: ignoring data channel %r", self.id, channel.label)
                return
            self._channel = channel
            channel.on("message", self._on_message)
            self._send(ev.event("session.created", session=self.session))

        @pc.on("track")
        def _on_track(track: Any) -> None:
            if track.kind == "audio":
                self._spawn(self._listen(track))

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            log.info("call %s: peer connection %s", self.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:
            await pc.close()
            raise ValueError(f"invalid SDP offer: {exc}") from exc
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            await pc.close()
            raise ValueError("the offer has no audio m-line")
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                transceiver.direction = "sendrecv"
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:  # the request went away: no call to close later
            await pc.close()
            raise
        self._arm_expiry()
        answer = ask_for_opus_fec(str(pc.localDescription.sdp))  # as the service's answer
        self.track.opus = sending_codec(answer) == "opus"
        return answer

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for handle in (self._idle_handle, self._expiry_handle):
            if handle:
                handle.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self.pc is not None:
            await self.pc.close()
        self._outlets.clear()
        self._on_closed(self)
        log.info("call %s closed", self.id)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _expire(self) -> None:
        minutes = self.max_session_s / 60
        self._send(
            ev.error(
                f"Your session hit the maximum duration of {minutes:g} minutes.",
                code="session_expired",
            )
        )
        self._spawn(self._close_soon())

    async def _close_soon(self) -> None:
        await asyncio.sleep(0.2)  # let the error event leave before the transport closes
        await self.close()

    # ------------------------------------------------------------------ wire

    def _send(self, event: JSON) -> None:
        if self.faults.stall_events or self.closed.is_set():
            return
        self.sent.append(event)
        log.info(
            "call %s out: %s %s",
            self.id,
            event["type"],
            event.get("event_id"),
            extra={
                "call_id": self.id,
                "event_type": event["type"],
                "event_id": event.get("event_id"),
                "direction": "out",
            },
        )
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps(event))
        for outlet in list(self._outlets):
            outlet(event)

    def _on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
            if not isinstance(data, dict):
                raise ValueError("event is not an object")
        except ValueError as exc:
            self._send(ev.error(f"Invalid JSON: {exc}", code="invalid_json"))
            return
        self.received.append(data)
        kind = str(data.get("type"))
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        log.info(
            "call %s in: %s %s",
            self.id,
            kind,
            event_id,
            extra={"call_id": self.id, "event_type": kind, "event_id": event_id, "direction": "in"},
        )
        handler = self._handlers().get(kind)
        if handler is None:
            self._send(
                ev.error(
                    f"Invalid value: '{kind}'. Supported values are: "
                    f"{', '.join(sorted(self._handlers()))}.",
                    code="invalid_value",
                    param="type",
                    event_id=event_id,
                )
            )
            return
        try:
            handler(data, event_id)
        except (KeyError, TypeError, ValueError) as exc:
            self._send(ev.error(f"Invalid event: {exc}", code="invalid_value", event_id=event_id))

    def _handlers(self) -> dict[str, Callable[[JSON, str | None], None]]:
        return {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_event,
            "input_audio_buffer.clear": self._clear_input,
            "output_audio_buffer.clear": self._clear_output,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    # ------------------------------------------------------------------ client events

    def _session_update(self, data: JSON, event_id: str | None) -> None:
        update = data.get("session")
        if not isinstance(update, dict):
            self._send(
                ev.error(
                    "Missing required parameter: 'session'.",
                    code="missing_required_parameter",
                    param="session",
                    event_id=event_id,
                )
            )
            return
        before = self.turn_detection
        try:
            self.session = apply_session_update(self.session, update, self._voice_locked)
        except SessionUpdateError as exc:
            self._send(ev.error(str(exc), code=exc.code, param=exc.param, event_id=event_id))
            return
        if self.turn_detection != before:  # a new VAD starts from silence
            self._speaking = False
            self._speech_run = 0
            self._silence_ms = 0
            if self._response is None and not self.track.pending():
                self._arm_idle_timeout()  # idle from now on (e.g. VAD back after push-to-talk)
        self._send(ev.event("session.updated", session=self.session))

    def _append(self, data: JSON, event_id: str | None) -> None:
        # the WebSocket path (over WebRTC audio arrives on the track), in the input format
        raw = base64.b64decode(str(data["audio"]), validate=True)
        kind = self._audio_format("input")
        self._hear(self._vad_in.pcm(decode_wire(raw, kind), wire_rate(kind)))

    def _audio_format(self, direction: str) -> str:
        """The session's ``audio.<direction>.format.type`` (``audio/pcm`` when unset)."""
        audio = self.session.get("audio") or {}
        fmt = (audio.get(direction) or {}).get("format") or {}
        return str(fmt.get("type") or "audio/pcm")

    def _commit_event(self, data: JSON, event_id: str | None) -> None:
        if self._buffer_ms < 100:
            self._send(
                ev.error(
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"100ms of audio, but buffer only has {self._buffer_ms}.00ms of audio.",
                    code="input_audio_buffer_commit_empty",
                    event_id=event_id,
                )
            )
            return
        self._commit(self._speech_item or ev.new_id("item"))

    def _clear_input(self, data: JSON, event_id: str | None) -> None:
        self._buffer_ms = 0
        self._speaking = False
        self._send(ev.event("input_audio_buffer.cleared"))

    def _clear_output(self, data: JSON, event_id: str | None) -> None:
        self.track.clear()
        response_id = self._last_response_id or ev.new_id("resp")
        self._cleared.add(response_id)
        self._send(ev.event("output_audio_buffer.cleared", response_id=response_id))

    def _item_create(self, data: JSON, event_id: str | None) -> None:
        item = dict(data["item"])
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            content = item.get("content") or []
            if role == "assistant" and any(
                c.get("type") in ("audio", "output_audio") for c in content
            ):
                self._send(
                    ev.error(
                        "Assistant audio items cannot be created.",
                        code="invalid_value",
                        param="item.content",
                        event_id=event_id,
                    )
                )
                return
            if role not in ("user", "assistant", "system"):
                self._send(
                    ev.error(
                        f"Invalid value: '{role}'.",
                        code="invalid_value",
                        param="item.role",
                        event_id=event_id,
                    )
                )
                return
            if role == "user":
                texts = [str(c.get("text", "")) for c in content if c.get("type") == "input_text"]
                if texts:
                    self._turn += 1
                    self._last_text = " ".join(texts)
                    self._last_was_audio = False
        elif kind == "function_call_output":
            call_id = str(item.get("call_id"))
            if call_id not in self._pending_calls:
                self._send(
                    ev.error(
                        f"Tool call ID '{call_id}' not found in conversation.",
                        code="invalid_value",
                        param="item.call_id",
                        event_id=event_id,
                    )
                )
                return
            self._tool_outputs.append((call_id, str(item.get("output", ""))))
        elif kind != "function_call":
            self._send(
                ev.error(
                    f"Invalid value: '{kind}'.",
                    code="invalid_value",
                    param="item.type",
                    event_id=event_id,
                )
            )
            return
        item.setdefault("id", ev.new_id("item"))
        item["object"] = "realtime.item"
        item.setdefault("status", "completed")
        self._add_item(item)

    def _add_item(self, item: JSON, audio_ms: int = 0) -> None:
        previous = self.items[-1].data["id"] if self.items else None
        self.items.append(Item(item, audio_ms))
        self._send(ev.event("conversation.item.added", previous_item_id=previous, item=item))
        self._send(ev.event("conversation.item.done", previous_item_id=previous, item=item))

    def _find(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.data.get("id") == item_id), None)

    def _item_retrieve(self, data: JSON, event_id: str | None) -> None:
        item = self._find(str(data["item_id"]))
        if item is None:
            self._send(
                ev.error(
                    f"Item with item_id not found: {data['item_id']}",
                    code="item_not_found",
                    param="item_id",
                    event_id=event_id,
                )
            )
            return
        self._send(ev.event("conversation.item.retrieved", item=item.data))

    def _item_delete(self, data: JSON, event_id: str | None) -> None:
        item = self._find(str(data["item_id"]))
        if item is None:
            self._send(
                ev.error(
                    f"Item with item_id not found: {data['item_id']}",
                    code="item_not_found",
                    param="item_id",
                    event_id=event_id,
                )
            )
            return
        self.items.remove(item)
        self._send(ev.event("conversation.item.deleted", item_id=item.data["id"]))

    def _item_truncate(self, data: JSON, event_id: str | None) -> None:
        item = self._find(str(data["item_id"]))
        end_ms = int(data["audio_end_ms"])
        if item is None or item.data.get("role") != "assistant":
            self._send(
                ev.error(
                    "Only assistant audio items can be truncated.",
                    code="invalid_value",
                    param="item_id",
                    event_id=event_id,
                )
            )
            return
        if end_ms < 0 or end_ms > item.audio_ms:
            self._send(
                ev.error(
                    f"audio_end_ms {end_ms} is beyond the item's audio ({item.audio_ms} ms).",
                    code="invalid_value",
                    param="audio_end_ms",
                    event_id=event_id,
                )
            )
            return
        for part in item.data.get("content", []):
            if part.get("type") == "output_audio" and item.audio_ms:
                words = str(part.get("transcript") or "").split()
                keep = round(len(words) * end_ms / item.audio_ms)
                part["transcript"] = " ".join(words[:keep])
        item.audio_ms = end_ms
        self._send(
            ev.event(
                "conversation.item.truncated",
                item_id=item.data["id"],
                content_index=int(data.get("content_index", 0)),
                audio_end_ms=end_ms,
            )
        )

    def _response_create(self, data: JSON, event_id: str | None) -> None:
        if self._response is not None:
            self._send(
                ev.error(
                    "Conversation already has an active response in progress: "
                    f"{self._response.id}. Wait until the response is finished before "
                    "creating a new one.",
                    code="conversation_already_has_active_response",
                    event_id=event_id,
                )
            )
            return
        params = data.get("response") or {}
        if not isinstance(params, dict):
            raise ValueError("response must be an object")
        self._start_response(params)

    def _response_cancel(self, data: JSON, event_id: str | None) -> None:
        response = self._response
        wanted = data.get("response_id")
        if response is None or (wanted and wanted != response.id):
            self._send(
                ev.error(
                    "Cancellation failed: no active response found",
                    code="response_cancel_not_active",
                    event_id=event_id,
                )
            )
            return
        self._cancel(response, "client_cancelled")

    # ------------------------------------------------------------------ input audio and VAD

    @property
    def turn_detection(self) -> JSON | None:
        td = self.session.get("audio", {}).get("input", {}).get("turn_detection")
        return td if isinstance(td, dict) else None

    async def _listen(self, track: Any) -> None:
        resampler = Resampler(VAD_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._hear(resampler.frame(frame))

    def _hear(self, samples: Pcm) -> None:
        """Input audio at ``VAD_RATE``, from the track or from appended events."""
        pending = np.concatenate([self._vad_pending, samples])
        while pending.size >= VAD_FRAME:
            chunk, pending = pending[:VAD_FRAME], pending[VAD_FRAME:]
            self._on_audio(self._vad, chunk.tobytes())
        self._vad_pending = pending

    def _on_audio(self, vad: webrtcvad.Vad, chunk: bytes) -> None:
        self._audio_ms += 20
        self._buffer_ms += 20
        td = self.turn_detection
        if td is None:
            return
        vad.set_mode(min(3, max(0, int(float(td.get("threshold", 0.5)) * 4))))
        speech = vad.is_speech(chunk, VAD_RATE)
        if not self._speaking:
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= 3:
                self._on_speech_started(td)
            elif not speech and self._buffer_ms > int(td.get("prefix_padding_ms", 300)) + 60:
                self._buffer_ms = (
                    int(td.get("prefix_padding_ms", 300)) + 60
                )  # keep only the padding
            return
        if speech:
            self._silence_ms = 0
            return
        self._silence_ms += 20
        if td["type"] == "semantic_vad":
            needed = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness", "auto")), 700)
        else:
            needed = int(td.get("silence_duration_ms", 500))
        if self._silence_ms >= needed:
            self._on_speech_stopped(td)

    def _on_speech_started(self, td: JSON) -> None:
        self._speaking = True
        self._silence_ms = 0
        if self._idle_handle:
            self._idle_handle.cancel()
            self._idle_handle = None
        self._speech_item = ev.new_id("item")
        start = max(0, self._audio_ms - 60 - int(td.get("prefix_padding_ms", 300)))
        self._send(
            ev.event(
                "input_audio_buffer.speech_started", audio_start_ms=start, item_id=self._speech_item
            )
        )
        if td.get("interrupt_response", True):
            if self._response is not None:
                self._cancel(self._response, "turn_detected", clear_audio=True)
            elif self.track.pending():
                self.track.clear()
                self._send(
                    ev.event(
                        "output_audio_buffer.cleared",
                        response_id=self._last_response_id or ev.new_id("resp"),
                    )
                )

    def _on_speech_stopped(self, td: JSON) -> None:
        self._speaking = False
        self._speech_run = 0
        item_id = self._speech_item or ev.new_id("item")
        self._send(
            ev.event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=self._audio_ms - self._silence_ms + 100,
                item_id=item_id,
            )
        )
        self._commit(item_id)
        if td.get("create_response", True) and self._response is None:
            self._start_response({})

    def _commit(self, item_id: str) -> None:
        previous = self.items[-1].data["id"] if self.items else None
        self._audio_turn += 1
        self._turn += 1
        transcript = self.script.transcript(self._audio_turn)
        self._last_text = transcript
        self._last_was_audio = True
        self._buffer_ms = 0
        self._speech_item = None
        self._send(
            ev.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        )
        self._add_item(ev.user_audio_item(item_id, None))
        transcription = self.session.get("audio", {}).get("input", {}).get("transcription")
        if transcription and "diarize" in str(transcription.get("model")):
            self._send_segments(item_id, transcript)
        if transcription:
            self._send(
                ev.event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item_id,
                    content_index=0,
                    delta=transcript,
                )
            )
            self._send(
                ev.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": 1.0},
                )
            )

    def _send_segments(self, item_id: str, transcript: str) -> None:
        """A diarizing transcription model's segments: one per few words, one speaker."""
        words = transcript.split()
        for n, start in enumerate(range(0, len(words), SEGMENT_WORDS)):
            self._send(
                ev.event(
                    "conversation.item.input_audio_transcription.segment",
                    item_id=item_id,
                    content_index=0,
                    id=f"seg_{n}",
                    speaker="A",
                    start=start * 0.4,
                    end=min(len(words), start + SEGMENT_WORDS) * 0.4,
                    text=" ".join(words[start : start + SEGMENT_WORDS]),
                )
            )

    def _arm_idle_timeout(self) -> None:
        td = self.turn_detection
        if self._idle_handle:
            self._idle_handle.cancel()
            self._idle_handle = None
        if not td or td.get("type") != "server_vad" or not td.get("idle_timeout_ms"):
            return
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_later(int(td["idle_timeout_ms"]) / 1000, self._idle_fired)

    def _idle_fired(self) -> None:
        self._idle_handle = None
        if self._response is not None or self._speaking:
            return
        item_id = ev.new_id("item")
        self._send(
            ev.event(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=max(0, self._audio_ms - self._buffer_ms),
                audio_end_ms=self._audio_ms,
                item_id=item_id,
            )
        )
        self._buffer_ms = 0
        previous = self.items[-1].data["id"] if self.items else None
        self._send(
            ev.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        )
        self._add_item(ev.user_audio_item(item_id, None))
        self._start_response({"instructions": "Say: Are you still there?"})

    # ------------------------------------------------------------------ responses

    def _start_response(self, params: JSON) -> None:
        if self.session.get("type") != "realtime":
            return  # transcription sessions never respond
        oob = params.get("conversation") == "none"
        metadata = params.get("metadata")
        response = Response(
            id=ev.new_id("resp"), oob=oob, metadata=metadata if isinstance(metadata, dict) else None
        )
        self._response = response
        self._last_response_id = response.id
        response.task = self._spawn(self._run_response(response, params))

    def _cancel(self, response: Response, reason: str, clear_audio: bool = False) -> None:
        response.cancel_reason = reason
        if clear_audio:
            self.track.clear()
        if response.task is not None:
            response.task.cancel()

    def _say_what(self, params: JSON) -> Decision:
        """What this response says, or which tools it calls (with what preamble)."""
        instructions = params.get("instructions")
        if (isinstance(instructions, str) and params.get("conversation") == "none") or (
            isinstance(instructions, str) and instructions.lower().startswith("say")
        ):
            match = re.match(r"(?is)^\s*say[:\s]+(.*)$", str(instructions))
            return Decision(say=match.group(1).strip() if match else str(instructions))
        if self._tool_outputs:
            # every output that has come in for the response that asked for the first one
            asked = self._pending_calls.get(self._tool_outputs[0][0], ("", DEFAULT_THEN_SAY))
            mine = [o for o in self._tool_outputs if self._pending_calls.get(o[0]) == asked]
            self._tool_outputs = [o for o in self._tool_outputs if o not in mine]
            for call_id, _ in mine:
                self._pending_calls.pop(call_id, None)
            return Decision(say=Script.after_tool(asked[1], *(output for _, output in mine)))
        tools = {str(t.get("name")) for t in self.session.get("tools", []) if isinstance(t, dict)}
        decision = self.script.decide(
            self._turn, self._last_text, tools, audio=self._last_was_audio
        )
        calls = decision.calls
        if self.session.get("parallel_tool_calls") is False:
            calls = calls[:1]
        preamble = decision.preamble
        effort = (self.session.get("reasoning") or {}).get("effort")
        if preamble is None and effort not in (None, "minimal"):
            preamble = DEFAULT_PREAMBLE
        return replace(decision, calls=calls, preamble=preamble or None)

    async def _run_response(self, response: Response, params: JSON) -> None:
        session = self.session
        modalities = params.get("output_modalities") or session.get("output_modalities", ["audio"])
        voice = str(
            (params.get("audio") or {}).get("output", {}).get("voice")
            or session["audio"]["output"].get("voice", "alloy")
        )
        cap = params.get("max_output_tokens", session.get("max_output_tokens", "inf"))
        response.budget = int(cap) if isinstance(cap, int) else None
        conversation_id = None if response.oob else "conv_standin"
        base = {
            "conversation_id": conversation_id,
            "metadata": response.metadata,
            "voice": voice,
            "modalities": modalities,
            "max_output_tokens": cap,
        }
        self._send(
            ev.event(
                "response.created",
                response=ev.response_object(response.id, status="in_progress", output=[], **base),
            )
        )
        self._send(ev.rate_limits(1200))
        decision = self._say_what(params)
        used = 0
        try:
            if decision.calls and decision.preamble:
                used += await self._speak(response, decision.preamble, voice, modalities)
            for name, arguments in decision.calls:
                cost = len(arguments) // 4 + 5
                if response.budget is not None and cost > response.budget:
                    response.cut_short = True
                    break
                await self._function_call(response, name, arguments, decision.then_say)
                used += cost
                if response.budget is not None:
                    response.budget -= cost
            if not decision.calls:
                used += await self._speak(response, decision.say or "", voice, modalities)
        except asyncio.CancelledError:
            reason = response.cancel_reason or "client_cancelled"
            self._finish_cancelled(response)
            self._response = None
            self._send(
                ev.event(
                    "response.done",
                    response=ev.response_object(
                        response.id,
                        status="cancelled",
                        output=response.output,
                        status_reason=reason,
                        usage=ev.usage(200, 5, used),
                        **base,
                    ),
                )
            )
            if response.audio_started and reason == "turn_detected":
                self._cleared.add(response.id)
                self._send(ev.event("output_audio_buffer.cleared", response_id=response.id))
            elif response.audio_started:
                self._spawn(self._await_drain(response))
            return
        self._response = None
        status = "incomplete" if response.cut_short else "completed"
        self._send(
            ev.event(
                "response.done",
                response=ev.response_object(
                    response.id,
                    status=status,
                    output=response.output,
                    status_reason="max_output_tokens" if response.cut_short else None,
                    usage=ev.usage(200, used // 4, used),
                    **base,
                ),
            )
        )
        if response.audio_started:
            await self._await_drain(response)
        else:
            self._arm_idle_timeout()

    async def _await_drain(self, response: Response) -> None:
        await self.track.drained.wait()
        if response.id not in self._cleared:
            self._send(ev.event("output_audio_buffer.stopped", response_id=response.id))
        self._arm_idle_timeout()

    def _finish_cancelled(self, response: Response) -> None:
        if response.item_id is None:
            return
        item = self._find(response.item_id)
        data = item.data if item else (response.output[-1] if response.output else None)
        if data is None:
            return
        data["status"] = "incomplete"
        if item:
            item.audio_ms = int(
                (self.track.played_samples - response.played_at_start) * 1000 / RATE
            )
        index = next((i for i, out in enumerate(response.output) if out is data), 0)
        self._send(
            ev.event(
                "response.output_item.done", response_id=response.id, output_index=index, item=data
            )
        )
        if not response.oob:
            previous = self.items[-2].data["id"] if len(self.items) > 1 else None
            self._send(ev.event("conversation.item.done", previous_item_id=previous, item=data))

    async def _function_call(
        self, response: Response, name: str, arguments: str, then_say: str
    ) -> None:
        item_id, call_id = ev.new_id("item"), ev.new_id("call")
        response.item_id = item_id
        item = ev.function_call_item(item_id, call_id, name, "", "in_progress")
        response.output.append(item)
        index = len(response.output) - 1
        self._send(
            ev.event(
                "response.output_item.added", response_id=response.id, output_index=index, item=item
            )
        )
        if not response.oob:
            previous = self.items[-1].data["id"] if self.items else None
            self.items.append(Item(item))
            self._send(ev.event("conversation.item.added", previous_item_id=previous, item=item))
        for i in range(0, len(arguments), 8):
            await asyncio.sleep(0.005)
            self._send(
                ev.event(
                    "response.function_call_arguments.delta",
                    response_id=response.id,
                    item_id=item_id,
                    output_index=index,
                    call_id=call_id,
                    delta=arguments[i : i + 8],
                )
            )
        self._send(
            ev.event(
                "response.function_call_arguments.done",
                response_id=response.id,
                item_id=item_id,
                output_index=index,
                call_id=call_id,
                name=name,
                arguments=arguments,
            )
        )
        item.update(arguments=arguments, status="completed")
        self._pending_calls[call_id] = (response.id, then_say)
        self._send(
            ev.event(
                "response.output_item.done", response_id=response.id, output_index=index, item=item
            )
        )
        if not response.oob:
            previous = self.items[-2].data["id"] if len(self.items) > 1 else None
            self._send(ev.event("conversation.item.done", previous_item_id=previous, item=item))

    async def _speak(self, response: Response, text: str, voice: str, modalities: list[str]) -> int:
        """Say ``text`` as the response's next output item, within the response's token
        budget (cut short: the item and the response end ``incomplete``); returns the
        tokens it used."""
        audio = modalities == ["audio"]
        item_id = ev.new_id("item")
        response.item_id = item_id
        item = ev.assistant_item(item_id, "in_progress", None)
        item["content"] = []
        response.output.append(item)
        index = len(response.output) - 1
        words = text.split()
        if response.budget is not None and len(words) * TOKENS_PER_WORD > response.budget:
            words = words[: response.budget // TOKENS_PER_WORD]
            text = " ".join(words)
            response.cut_short = True
        self._send(
            ev.event(
                "response.output_item.added", response_id=response.id, output_index=index, item=item
            )
        )
        record = Item(item)
        if not response.oob:
            previous = self.items[-1].data["id"] if self.items else None
            self.items.append(record)
            self._send(ev.event("conversation.item.added", previous_item_id=previous, item=item))
        part: JSON = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._send(
            ev.event(
                "response.content_part.added",
                response_id=response.id,
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part,
            )
        )
        if audio:
            speed = float(self.session["audio"]["output"].get("speed", 1.0))
            samples = await asyncio.to_thread(self.voice.speak, text, voice, speed)
            response.audio_started = True
            response.played_at_start = self.track.played_samples + self.track.pending()
            self._voice_locked = True
            item["content"] = [{"type": "output_audio", "transcript": None}]
            self._send(ev.event("output_audio_buffer.started", response_id=response.id))
            self.track.begin(response.id, item_id)
            await self._stream_audio(response, samples, words, item_id, index)
            self.track.end()
            record.audio_ms = int(samples.size * 1000 / RATE)
            self._send(
                ev.event(
                    "response.output_audio_transcript.done",
                    response_id=response.id,
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    transcript=text,
                )
            )
            part = {"type": "audio", "transcript": text}
            item["content"] = [{"type": "output_audio", "transcript": text}]
        else:
            for i, word in enumerate(words):
                await asyncio.sleep(0.01)
                self._send(
                    ev.event(
                        "response.output_text.delta",
                        response_id=response.id,
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        delta=("" if i == 0 else " ") + word,
                    )
                )
            self._send(
                ev.event(
                    "response.output_text.done",
                    response_id=response.id,
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    text=text,
                )
            )
            part = {"type": "text", "text": text}
            item["content"] = [{"type": "output_text", "text": text}]
        item["status"] = "incomplete" if response.cut_short else "completed"
        self._send(
            ev.event(
                "response.content_part.done",
                response_id=response.id,
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part,
            )
        )
        self._send(
            ev.event(
                "response.output_item.done", response_id=response.id, output_index=index, item=item
            )
        )
        if not response.oob:
            previous = self.items[-2].data["id"] if len(self.items) > 1 else None
            self._send(ev.event("conversation.item.done", previous_item_id=previous, item=item))
        used = len(words) * TOKENS_PER_WORD
        if response.budget is not None:
            response.budget -= used
        return used

    async def _stream_audio(
        self, response: Response, samples: Any, words: list[str], item_id: str, index: int
    ) -> None:
        """Generate audio a little ahead of playback, with transcript deltas in step."""
        lead = RATE // 5  # 200 ms generated ahead of what is played
        chunk = RATE // 10
        sent_words = 0
        total = max(1, int(samples.size))
        pos = 0
        drop_at = self.faults.drop_after_audio_ms
        while pos < samples.size:
            while self.track.pending() > lead:  # noqa: ASYNC110  # polls the playout position
                await asyncio.sleep(0.02)
            piece = samples[pos : pos + chunk]
            self.track.enqueue(piece)
            pos += piece.size
            response.audio_samples = pos
            due = round(len(words) * pos / total)
            while sent_words < due:
                delta = ("" if sent_words == 0 else " ") + words[sent_words]
                self._send(
                    ev.event(
                        "response.output_audio_transcript.delta",
                        response_id=response.id,
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        delta=delta,
                    )
                )
                sent_words += 1
            if drop_at is not None and pos * 1000 / RATE >= drop_at:
                log.warning("call %s: fault switch drops the peer connection mid-reply", self.id)
                self._spawn(self.close())
                await asyncio.sleep(3600)
        await self.track.drained.wait()

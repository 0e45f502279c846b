"""The aiortc adapter: one ``RealtimeSession`` is one call to the Realtime service (GA, WebRTC).

connect(): key → peer connection (audio sendrecv + data channel ``oai-events``) → offer →
``POST {base}/v1/realtime/calls`` (``application/sdp``, ``Bearer ek_…``) → 201 + ``Location`` →
answer → ``session.created`` → ``session.update`` → ``session.updated`` (or 5 s) → ready.
Server events become machine events through ``on_event``; the app decides what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiortc import RTCSessionDescription

from appliance import machine as m
from appliance.audio.base import AudioSink
from appliance.errors import CallRejected, RealtimeUnreachable, SessionError, SessionLost
from appliance.neterrors import describe
from appliance.realtime import messages as msg
from appliance.realtime.keys import CachedKeySource, KeySource
from appliance.realtime.media import MicTrack, Playout
from appliance_common.ice import PeerConnection
from appliance_common.opus import ask_for_opus_fec

log = logging.getLogger(__name__)
JSON = dict[str, Any]
DEFAULT_MAX_MESSAGE_SIZE = 65_536  # what aiortc assumes when the answer gives none
MAX_RATE_WAIT_S = 60.0
"""Longest the device holds a ``response.create`` back for a rate limit: the service's
limits are per minute, so a later ``reset_seconds`` is not believed."""


class RealtimeSession:
    """One Realtime call. Not reusable: make a new one to reconnect."""

    def __init__(
        self,
        *,
        keys: KeySource,
        session: JSON,
        mic: MicTrack,
        sink: AudioSink,
        on_event: Callable[[m.Event], None],
        on_transcript: Callable[[str, str], None] | None = None,
        http: httpx.AsyncClient | None = None,
        update_timeout_s: float = 5.0,
        liveness_s: float = 5.0,
    ) -> None:
        self._keys = keys
        self._session = session
        self.mic = mic
        self.playout = Playout(sink)
        self._on_event = on_event
        self._on_transcript = on_transcript
        self._http = http
        self._update_timeout_s = update_timeout_s
        self.liveness_s = liveness_s
        """Declare the session dead after this long without RTP or events (0: never)."""
        self._watch_task: asyncio.Task[None] | None = None
        self.opened_at = time.monotonic()
        self.probes = 0
        self.partial_reply = ""
        """The assistant's transcript so far, for the reply being spoken (what the user has
        heard if the call breaks now)."""
        self._announcements: set[str] = set()
        self.rate_limits: dict[str, tuple[int, float]] = {}
        """From ``rate_limits.updated``: name → (remaining, monotonic time it resets)."""
        self._deferred: asyncio.TimerHandle | None = None
        self._deferred_kwargs: dict[str, Any] | None = None
        self.unknown_events = msg.QuietLog(log, "ignoring unknown server event")
        self.bad_events = msg.QuietLog(
            log, "ignoring a malformed server event", logging.WARNING, burst=5
        )
        self.pc = PeerConnection()
        self._channel: Any = None
        self.call_id: str | None = None
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self._sent = msg.SentEvents()
        self._created = asyncio.Event()
        self._updated = asyncio.Event()
        self._update_id: str | None = None
        self._manual_turns = False
        self._closing = False
        self._lost = False
        self._response_active = False
        self._response_wanted = False
        self._reply_item: str | None = None
        """The assistant message whose audio is playing (of the current response)."""
        self.conversation: set[str] = set()
        """Ids of the items in the conversation (``conversation.item.added`` … ``.deleted``);
        out-of-band responses add none, so their items are never truncated."""
        self._segments: dict[str, list[str]] = {}
        """Diarized transcription segments by user item, until its transcript completes."""
        self.timings: dict[str, float] = {}
        self.server_events = 0
        self.messages_in = 0
        """Data-channel messages received, readable or not."""
        self.last_server_event = time.monotonic()

    # ------------------------------------------------------------------ connect / close

    async def _offer(self) -> str:
        """The mic's track and the ``oai-events`` channel wired, the local offer (Opus FEC)."""
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self._channel = self.pc.createDataChannel("oai-events")
        self._channel.on("message", self._on_message)
        self._channel.on("close", lambda: self._lose("data channel closed"))
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return ask_for_opus_fec(self.pc.localDescription.sdp)

    async def connect(self) -> None:
        """Open and configure the call. Raises ``SessionError``/``ProvisioningError`` subclasses."""
        started = time.perf_counter()
        key = await self._keys.get_key()
        self.timings["key_s"] = time.perf_counter() - started
        offer = await self._offer()
        try:
            answer = await self._post_offer(key.realtime_base, key.value, offer)
        except CallRejected as exc:
            if exc.status != 401 or not isinstance(self._keys, CachedKeySource):
                raise
            # the service forgot the cached key (restarted, or revoked it): one fresh key
            log.warning("the Realtime service refused the cached key (401): minting a fresh one")
            self._keys.invalidate()
            key = await self._keys.get_key()
            answer = await self._post_offer(key.realtime_base, key.value, offer)
        self.timings["answer_s"] = time.perf_counter() - started
        found = re.search(r"^a=max-message-size:(\d+)", answer, re.MULTILINE)
        self.max_message_size = int(found.group(1)) if found else DEFAULT_MAX_MESSAGE_SIZE
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:  # aiortc raises several kinds on a bad answer
            raise SessionError(
                f"the Realtime service's SDP answer is unusable ({type(exc).__name__})"
            ) from exc
        await self._wait(self._created, "session.created")
        self.timings["created_s"] = time.perf_counter() - started
        config = defer_to_group(self._session, key.session)
        if self._manual_turns:
            audio = config.get("audio", {})
            config = {
                **config,
                "audio": {**audio, "input": {**audio.get("input", {}), "turn_detection": None}},
            }
        update = msg.session_update(config)
        self._update_id = str(update["event_id"])
        self.send(update)
        try:
            await asyncio.wait_for(self._updated.wait(), self._update_timeout_s)
        except TimeoutError:
            log.warning("no session.updated within %.1f s; going on", self._update_timeout_s)
        self.timings["ready_s"] = time.perf_counter() - started
        self.opened_at = time.monotonic()
        if self.liveness_s > 0:
            self._watch_task = asyncio.create_task(self._watch(), name="liveness")
        log.info(
            "session ready in %.0f ms (call %s)",
            self.timings["ready_s"] * 1000,
            self.call_id,
            extra={"call_id": self.call_id, "latency_ms": round(self.timings["ready_s"] * 1000)},
        )

    async def _wait(self, event: asyncio.Event, what: str) -> None:
        while not event.is_set():
            if self._lost:
                raise SessionLost(f"connection lost before {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 0.1)

    async def _post_offer(self, base: str, ek: str, sdp: str) -> str:
        url = f"{base.rstrip('/')}/v1/realtime/calls"
        headers = {"Authorization": f"Bearer {ek}", "Content-Type": "application/sdp"}
        client = self._http or httpx.AsyncClient(timeout=10)
        try:
            response = await client.post(url, content=sdp, headers=headers)
        except httpx.HTTPError as exc:
            raise RealtimeUnreachable(f"Realtime service unreachable: {describe(exc)}") from exc
        finally:
            if self._http is None:
                await client.aclose()
        if response.status_code != 201:
            message, code = _error_detail(response)
            if response.status_code == 401 and isinstance(self._keys, CachedKeySource):
                self._keys.invalidate()
            raise CallRejected(response.status_code, message, code)
        if not response.text.lstrip().startswith("v=0"):
            kind = response.headers.get("content-type", "no content type")
            raise SessionError(
                f"the Realtime service answered 201 without an SDP answer "
                f"({msg.label(kind, 40)}, {len(response.content)} bytes)"
            )
        location = response.headers.get("location", "")
        self.call_id = location.rstrip("/").rsplit("/", 1)[-1] or None
        return response.text

    @property
    def accepting_audio(self) -> bool:
        """Connected and alive: mic frames pushed now will be sent."""
        return self.pc.connectionState == "connected" and not (self._lost or self._closing)

    async def close(self) -> None:
        if not self._closing:
            self.unknown_events.flush()
            self.bad_events.flush()
        self._closing = True
        if self._deferred is not None:
            self._deferred.cancel()
        try:
            if self._watch_task is not None:
                self._watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch_task
            await self.playout.stop()
        finally:
            await self.pc.close()  # even when cancelled (App.shutdown): no socket left open

    # ------------------------------------------------------------------ liveness

    async def _packets_received(self) -> int:
        total = 0
        for receiver in self.pc.getReceivers():
            report = await receiver.getStats()
            total += sum(
                getattr(stats, "packetsReceived", 0) or 0
                for stats in report.values()
                if getattr(stats, "type", "") == "inbound-rtp"
            )
        return total

    async def _watch(self) -> None:
        """Notice a dead session within ``liveness_s``. aiortc alone notices a partition only
        after ~30 s (consent freshness) and never says ``failed``. Traffic is either RTP from
        the service (it normally streams continuously) or data-channel events; after half the
        deadline in silence a harmless probe (an empty ``session.update``, answered with
        ``session.updated``) asks for a sign of life."""
        tick = min(0.5, self.liveness_s / 4)
        packets = await self._packets_received()
        heard = time.monotonic()
        events = self.server_events
        probed = False
        while not (self._closing or self._lost):
            await asyncio.sleep(tick)
            now_packets = await self._packets_received()
            if now_packets != packets or self.server_events != events:
                packets, events, heard, probed = (
                    now_packets,
                    self.server_events,
                    time.monotonic(),
                    False,
                )
                continue
            silent = time.monotonic() - heard
            if silent >= self.liveness_s:
                self._lose(f"no audio or events from the service for {silent:.1f} s")
                return
            if silent >= self.liveness_s / 2 and not probed:
                probed = True
                self.probes += 1
                self._probe()

    def _probe(self) -> None:
        """Ask the service for a sign of life (answered with ``session.updated``)."""
        self.send(msg.session_update({"type": self._session.get("type", "realtime")}))

    # ------------------------------------------------------------------ sending

    def send(self, event: JSON) -> None:
        """Send a client event (it must carry an ``event_id``)."""
        if self._channel is None or self._channel.readyState != "open":
            log.warning("not sent (%s): data channel is not open", event["type"])
            return
        self._sent.remember(event)
        log.debug("out: %s", event["type"], extra={"event_type": event["type"]})
        self._channel.send(json.dumps(event))

    def request_response(self, **kwargs: Any) -> None:
        """``response.create``, held back while a response is active, and until the
        request limit resets when ``rate_limits.updated`` said none are left."""
        if self._response_active:
            self._response_wanted = True
            return
        wait = self.rate_limited_for()
        if wait > 0:
            log.warning("request limit reached; asking for the response in %.1f s", wait)
            if self._deferred is not None:
                self._deferred.cancel()
            loop = asyncio.get_running_loop()
            self._deferred = loop.call_later(wait, self._send_deferred, kwargs)
            self._deferred_kwargs = kwargs
            return
        self._response_active = True  # until response.created/done or an error says otherwise
        self.send(msg.response_create(**kwargs))

    def _send_deferred(self, kwargs: dict[str, Any]) -> None:
        self._deferred = None
        self._deferred_kwargs = None
        if not (self._closing or self._lost):
            self.request_response(**kwargs)

    def rate_limited_for(self) -> float:
        """Seconds a ``response.create`` is held back now (at most ``MAX_RATE_WAIT_S``)."""
        remaining, resets_at = self.rate_limits.get("requests", (1, 0.0))
        return max(0.0, resets_at - time.monotonic()) if remaining <= 0 else 0.0

    def _on_rate_limits(self, limits: object) -> None:
        """Take the limits that make sense; one with a wrong field is skipped, logged."""
        if not isinstance(limits, list):
            raise TypeError("rate_limits is not a list")
        now = time.monotonic()
        for limit in limits:
            remaining = _number(limit, "remaining")
            reset = _number(limit, "reset_seconds")
            if remaining is None or reset is None or not isinstance(limit.get("name"), str):
                log.warning("ignoring a malformed rate limit %s", msg.label(limit))
                continue
            name = msg.label(limit["name"], 40)
            reset = min(max(0.0, reset), MAX_RATE_WAIT_S)
            self.rate_limits[name] = (int(remaining), now + reset)
            total = _number(limit, "limit") or 0
            if total and remaining < total / 10:
                log.warning("rate limit %s low: %d of %.0f left", name, remaining, total)
        if self._deferred is not None and self.rate_limited_for() == 0:
            # the limit was lifted before the time it gave: ask now
            self._deferred.cancel()
            kwargs = self._deferred_kwargs or {}
            self._deferred = None
            self._send_deferred(kwargs)

    def commit_input(self) -> None:
        self.send(msg.commit_input())

    def set_turn_detection(self, server_vad: bool) -> None:
        audio = self._session.get("audio", {}).get("input", {})
        configured = audio.get("turn_detection", {"type": "server_vad"})
        wanted = configured if server_vad else None
        if self._update_id is None:
            # not configured yet (e.g. the button is held while connecting): the first
            # session.update carries it instead
            self._manual_turns = not server_vad
            return
        self.send(msg.turn_detection_update(wanted, str(self._session.get("type", "realtime"))))

    def send_tool_output(self, call_id: str, output: str) -> None:
        self.send(msg.function_call_output(call_id, output))

    def announce(self, kind: str, instructions: str) -> None:
        """An out-of-band spoken notice: not added to the conversation, tagged ``kind``."""
        self.request_response(instructions=instructions, out_of_band=True, metadata={"kind": kind})

    def seed(self, history: list[tuple[str, str]]) -> None:
        """Carry a conversation over into this new session: recent turns as items."""
        for role, text in history:
            self.send(msg.user_text(text) if role == "user" else msg.assistant_text(text))

    def interrupt(self) -> None:
        """Barge-in: cancel the response, clear the server's audio buffer, flush playback,
        and truncate the assistant item to what the user actually heard."""
        played = self.playout.reply_ms
        if self._response_active:
            self.send(msg.response_cancel())
        self.send(msg.output_audio_clear())
        self.playout.interrupt()
        if self._reply_item in self.conversation and played > 0:
            # an out-of-band announcement's item is in no conversation: nothing to truncate
            self.send(msg.truncate(str(self._reply_item), played))
        self._response_wanted = False

    # ------------------------------------------------------------------ receiving

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self.playout.start(track)

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("peer connection %s", state, extra={"call_id": self.call_id})
        if state in ("failed", "closed"):
            self._lose(f"peer connection {state}")

    def _lose(self, reason: str) -> None:
        if self._closing or self._lost:
            return
        self._lost = True
        log.warning("session lost: %s", reason, extra={"call_id": self.call_id})
        self._on_event(m.SessionLost(reason))

    def _on_message(self, message: str | bytes) -> None:
        """The error boundary: whatever a server event holds, the call stays up. (An
        exception here would escape into aiortc's transport loop and close the channel.)"""
        self.messages_in += 1
        try:
            data = msg.parse(message)
            if data is None:
                return
            self.server_events += 1
            self.last_server_event = time.monotonic()
        except Exception:
            log.exception("could not read a data-channel message")
            return
        kind = data["type"]
        log.debug("in: %s", msg.label(kind), extra={"event_type": kind, "call_id": self.call_id})
        try:
            self._track(data)
            event = msg.to_machine_event(data)
        except Exception as exc:  # any shape the service (or a bug) sends
            self.bad_events.note(
                kind,
                f"event_id {msg.label(data.get('event_id'), 40)}: "
                f"{type(exc).__name__}: {msg.label(str(exc), 120)}",
                call_id=self.call_id,
            )
            return
        if event is not None:
            self._on_event(event)

    def _track(self, data: JSON) -> None:
        """Bookkeeping the session itself needs (sequencer, gating, transcripts, errors)."""
        kind = data["type"]
        if kind == "session.created":
            self._created.set()
        elif kind == "session.updated":
            self._updated.set()
        elif kind == "response.created":
            response = data["response"]
            announcement = bool((response.get("metadata") or {}).get("kind"))
            response_id = str(response["id"])
            self._response_active = True
            self.partial_reply = ""
            self._reply_item = None
            if announcement:
                self._announcements.add(response_id)
        elif kind == "response.done":
            self._response_active = False
            self._response_done(data["response"])
        elif kind == "response.output_item.added":
            item = data["item"]
            if item.get("type") == "message" and item.get("role") == "assistant":
                self._reply_item = str(item["id"])
        elif kind in ("conversation.item.added", "conversation.item.done"):
            self.conversation.add(str(data["item"]["id"]))
        elif kind == "conversation.item.deleted":
            self.conversation.discard(str(data["item_id"]))
        elif kind == "output_audio_buffer.started":
            self.playout.reply_started()
        elif kind == "output_audio_buffer.cleared":
            self.playout.interrupt()  # the service cut its audio: drop what is queued here
        elif kind == "response.output_audio_transcript.delta":
            self.partial_reply += _text(data, "delta")
        elif kind == "response.output_audio_transcript.done":
            announcement = str(data.get("response_id")) in self._announcements
            self.partial_reply = ""
            if self._on_transcript:  # announcements are not part of the conversation
                role = "announcement" if announcement else "assistant"
                self._on_transcript(role, _text(data, "transcript"))
        elif kind == "conversation.item.input_audio_transcription.segment":
            self._segments.setdefault(str(data["item_id"]), []).append(_text(data, "text"))
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._segments.pop(str(data["item_id"]), None)
            if self._on_transcript:
                self._on_transcript("user", _text(data, "transcript"))
        elif kind == "conversation.item.input_audio_transcription.failed":
            # the final transcript failed: what the diarized segments said is the best left
            heard = " ".join(self._segments.pop(str(data["item_id"]), []))
            log.warning("transcription failed: %s", (data.get("error") or {}).get("message"))
            if heard and self._on_transcript:
                self._on_transcript("user", heard)
        elif kind == "error":
            self._on_error(data["error"])
        elif kind == "rate_limits.updated":
            self._on_rate_limits(data["rate_limits"])
        elif kind not in _KNOWN:
            self.unknown_events.note(kind, call_id=self.call_id)

    def _response_done(self, response: JSON) -> None:
        details = response.get("status_details") or {}
        if response.get("status") == "incomplete":
            log.warning(
                "reply incomplete: %s (max_output_tokens %s)",
                details.get("reason"),
                response.get("max_output_tokens"),
                extra={"call_id": self.call_id},
            )
        if self._response_wanted:
            self._response_wanted = False
            self.request_response()

    def _on_error(self, error: JSON) -> None:
        code = error.get("code")
        event_id = error.get("event_id")
        cause = self._sent.cause(event_id)
        if code == "response_cancel_not_active":
            log.debug("cancel raced a finished response (harmless)")
            self._response_active = False  # the service says none is: never wait for one
            return
        log.warning(
            "server error %s: %s (caused by %s %s)",
            msg.label(code, 60),
            msg.label(error.get("message"), 300),
            cause or "an unknown event",
            msg.label(event_id, 60),
            extra={
                "error_code": msg.label(code, 60),
                "client_event_id": msg.label(event_id, 60),
                "call_id": self.call_id,
            },
        )
        if code == "conversation_already_has_active_response":
            self._response_active = True
            self._response_wanted = True
        elif cause == "response.create":
            self._response_active = False
        elif event_id is not None and event_id == self._update_id:
            self._updated.set()  # the update was refused; do not hold the uplink for 5 s
        elif code == "session_expired":
            self._lose("session_expired")


def defer_to_group(session: JSON, minted: JSON) -> JSON:
    """The device's ``session.update`` without its transcription model when the key's
    session (the group's profile on the server) names one: the server chooses the models per
    group, so moving a fleet is one command there (docs/models.md)."""
    audio = minted.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    theirs = inp.get("transcription") if isinstance(inp, dict) else None
    mine = (session.get("audio") or {}).get("input") or {}
    if (
        not isinstance(theirs, dict)
        or not theirs.get("model")
        or "transcription" not in mine
        or session.get("type") != minted.get("type")
    ):
        return session
    rest = {k: v for k, v in mine.items() if k != "transcription"}
    return {**session, "audio": {**session["audio"], "input": rest}}


def _number(data: object, key: str) -> float | None:
    """A finite number field of a JSON object, or ``None``."""
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _text(data: JSON, key: str) -> str:
    """A string field the device keeps; anything else is a malformed event."""
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is {type(value).__name__}, not a string")
    return value


def _error_detail(response: httpx.Response) -> tuple[str, str | None]:
    try:
        error = response.json()["error"]
        return str(error.get("message") or response.reason_phrase), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.reason_phrase or f"HTTP {response.status_code}", None


_KNOWN = {
    "conversation.item.created",
    "conversation.item.truncated",
    "conversation.item.retrieved",
    "conversation.item.input_audio_transcription.delta",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.timeout_triggered",
    "output_audio_buffer.stopped",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
}

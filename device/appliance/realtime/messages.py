"""GA client events (builders) and server events (light parsing), without importing ``openai``.

Every client event carries a fresh ``event_id`` so an ``error`` can be tied back to it.
``to_machine_event`` maps the server events the device cares about to ``appliance.machine``
events; everything else maps to ``None`` and is only logged.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from appliance import machine as m

log = logging.getLogger(__name__)
JSON = dict[str, Any]

_counter = itertools.count(1)
_prefix = secrets.token_hex(4)


def event_id() -> str:
    return f"evt_{_prefix}_{next(_counter)}"


def _event(kind: str, **fields: Any) -> JSON:
    return {"type": kind, "event_id": event_id(), **fields}


# ------------------------------------------------------------------ client events


def session_update(session: JSON) -> JSON:
    return _event("session.update", session=session)


def turn_detection_update(turn_detection: JSON | None, kind: str = "realtime") -> JSON:
    """Switch server VAD on (``turn_detection``) or off (``None``) in a session of ``kind``
    (``realtime`` or ``transcription``)."""
    return session_update({"type": kind, "audio": {"input": {"turn_detection": turn_detection}}})


def commit_input() -> JSON:
    return _event("input_audio_buffer.commit")


def clear_input() -> JSON:
    return _event("input_audio_buffer.clear")


def response_create(
    *,
    instructions: str | None = None,
    out_of_band: bool = False,
    metadata: dict[str, str] | None = None,
    modalities: list[str] | None = None,
) -> JSON:
    response: JSON = {}
    if instructions is not None:
        response["instructions"] = instructions
    if out_of_band:
        response["conversation"] = "none"
    if metadata:
        response["metadata"] = metadata
    if modalities:
        response["output_modalities"] = modalities
    return _event("response.create", response=response) if response else _event("response.create")


def response_cancel() -> JSON:
    return _event("response.cancel")


def output_audio_clear() -> JSON:
    return _event("output_audio_buffer.clear")


def truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> JSON:
    return _event(
        "conversation.item.truncate",
        item_id=item_id,
        content_index=content_index,
        audio_end_ms=max(0, int(audio_end_ms)),
    )


def function_call_output(call_id: str, output: str) -> JSON:
    return _event(
        "conversation.item.create",
        item={"type": "function_call_output", "call_id": call_id, "output": output},
    )


def user_text(text: str) -> JSON:
    return _event(
        "conversation.item.create",
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    )


def assistant_text(text: str) -> JSON:
    """A past assistant turn (re-seeding a conversation after a reconnect)."""
    content = [{"type": "output_text", "text": text}]
    return _event(
        "conversation.item.create",
        item={"type": "message", "role": "assistant", "content": content},
    )


def user_image(data_url: str, detail: str = "auto") -> JSON:
    content = [{"type": "input_image", "image_url": data_url, "detail": detail}]
    return _event(
        "conversation.item.create",
        item={"type": "message", "role": "user", "content": content},
    )


# ------------------------------------------------------------------ server events


def parse(message: str | bytes) -> JSON | None:
    """Decode one data-channel message; ``None`` (logged) if it is not a JSON event object."""
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        log.warning("ignoring a data-channel message that is not JSON (%d bytes)", len(message))
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        log.warning("ignoring a data-channel message without a type")
        return None
    return data


def to_machine_event(data: JSON) -> m.Event | None:
    """The machine event a server event means, or ``None``."""
    kind = data["type"]
    try:
        match kind:
            case "input_audio_buffer.speech_started":
                return m.SpeechStarted()
            case "input_audio_buffer.speech_stopped":
                return m.SpeechStopped()
            case "input_audio_buffer.timeout_triggered":
                return m.InputTimedOut()
            case "response.created":
                return m.ResponseStarted(str(data["response"]["id"]))
            case "output_audio_buffer.started":
                return m.ReplyAudioStarted(str(data["response_id"]))
            case "output_audio_buffer.stopped" | "output_audio_buffer.cleared":
                return m.ReplyAudioStopped(str(data["response_id"]))
            case "response.done":
                response = data["response"]
                had_audio = any(
                    part.get("type") == "output_audio"
                    for item in response.get("output") or []
                    for part in item.get("content") or []
                )
                return m.ResponseDone(str(response["id"]), str(response["status"]), had_audio)
            case "response.output_item.done":
                item = data["item"]
                if item.get("type") == "function_call" and item.get("status") == "completed":
                    return m.ToolCallRequested(
                        str(item["call_id"]), str(item["name"]), str(item.get("arguments") or "{}")
                    )
                return None
    except (KeyError, TypeError, AttributeError):
        log.warning("ignoring a malformed %s event", kind)
    return None


def label(value: object, limit: int = 80) -> str:
    """A server-supplied value (an event type, an id) made safe to log: short, one line."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


class QuietLog:
    """Logs the first ``burst`` occurrences of each kind at once, then only counts: the
    count is reported at most every ``every_s`` seconds (which opens a new burst) and on
    ``flush()``. A flood of one kind of event is a few lines, not one line each; at most
    ``max_kinds`` kinds are told apart."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        level: int = logging.INFO,
        burst: int = 1,
        every_s: float = 60.0,
        max_kinds: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._level = level
        self._burst = burst
        self._every_s = every_s
        self._max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[str, list[float]] = {}
        """kind → [logged in this window, counted (not logged) since, window start]."""

    def note(self, kind: str, detail: str = "", **extra: Any) -> None:
        kind = label(kind)
        if kind not in self._kinds and len(self._kinds) >= self._max_kinds:
            kind = "(other kinds)"
        now = self._clock()
        entry = self._kinds.setdefault(kind, [0, 0, now])
        if entry[1] and now - entry[2] >= self._every_s:
            self._report(kind, entry, now)
        if entry[0] < self._burst:
            entry[0] += 1
            last = entry[0] == self._burst
            self._log.log(
                self._level,
                "%s %s%s%s",
                self._what,
                kind,
                f" ({detail})" if detail else "",
                "; more of this kind are counted, not logged" if last else "",
                extra={"event_type": kind, **extra},
            )
            return
        entry[1] += 1

    def flush(self) -> None:
        now = self._clock()
        for kind, entry in self._kinds.items():
            if entry[1]:
                self._report(kind, entry, now)

    def _report(self, kind: str, entry: list[float], now: float) -> None:
        self._log.log(
            self._level,
            "%s %s: %d more in the last %.0f s",
            self._what,
            kind,
            int(entry[1]),
            now - entry[2],
            extra={"event_type": kind, "count": int(entry[1])},
        )
        entry[:] = [0, 0, now]


class SentEvents:
    """Remembers the type of recently sent client events, to explain ``error`` events."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._sent: OrderedDict[str, str] = OrderedDict()

    def remember(self, event: JSON) -> None:
        self._sent[str(event["event_id"])] = str(event["type"])
        while len(self._sent) > self._size:
            self._sent.popitem(last=False)

    def cause(self, event_id: object) -> str | None:
        return self._sent.get(event_id) if isinstance(event_id, str) else None

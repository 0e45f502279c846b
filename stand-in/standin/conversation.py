"""A stand-in call's conversation state: the session object, its items and what the user said.

``apply_session_update`` validates a ``session.update`` (and a client_secrets ``session``) as
the service does and merges it; ``Conversation`` holds the session and the items, answers the
``session.update`` and ``conversation.item.create/retrieve/delete`` client events, and keeps
what the scripted model decides from (the user's last words, the tool calls awaiting output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json, to_json

from standin import events as ev
from standin.errors import StandinError
from standin.wire import Handler, Wire

JSON = dict[str, Any]
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 400}
"""Silence that ends a turn under ``semantic_vad``, by eagerness."""
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


class SessionUpdateError(StandinError, ValueError):
    """A ``session.update`` the service would refuse: ``param`` names the field."""

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


class Conversation:
    """The session object and the conversation's items of one call."""

    def __init__(
        self, session: JSON, wire: Wire, on_turn_detection_changed: Callable[[], None]
    ) -> None:
        self.session = session
        self.items: list[Item] = []
        self.voice_locked = False
        """Assistant audio is present: the voice can no longer change."""
        self.turn = 0
        """User turns so far (spoken or typed)."""
        self.last_text = ""
        self.last_was_audio = False
        self.pending_calls: dict[str, tuple[str, str]] = {}
        """Function calls awaiting output: call id -> (response id, what to say after)."""
        self.tool_outputs: list[tuple[str, str]] = []
        """(call id, output) that came in and await a response."""
        self._wire = wire
        self._on_turn_detection_changed = on_turn_detection_changed

    def handlers(self) -> Mapping[str, Handler]:
        return {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.delete": self._item_delete,
        }

    # ------------------------------------------------------------------ reading

    @property
    def turn_detection(self) -> JSON | None:
        td = self.session.get("audio", {}).get("input", {}).get("turn_detection")
        return td if isinstance(td, dict) else None

    def audio_format(self, direction: str) -> str:
        """The session's ``audio.<direction>.format.type`` (``audio/pcm`` when unset)."""
        audio = self.session.get("audio") or {}
        fmt = (audio.get(direction) or {}).get("format") or {}
        return str(fmt.get("type") or "audio/pcm")

    def last_id(self) -> str | None:
        return self.items[-1].data["id"] if self.items else None

    def find(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.data.get("id") == item_id), None)

    # ------------------------------------------------------------------ changing

    def user_said(self, text: str, *, audio: bool) -> None:
        """A user turn: what the model answers next."""
        self.turn += 1
        self.last_text = text
        self.last_was_audio = audio

    def add_item(self, item: JSON, audio_ms: int = 0) -> None:
        """A complete item: ``conversation.item.added`` and ``.done`` at once."""
        previous = self.last_id()
        self.items.append(Item(item, audio_ms))
        self._wire.send(ev.event("conversation.item.added", previous_item_id=previous, item=item))
        self._wire.send(ev.event("conversation.item.done", previous_item_id=previous, item=item))

    def open_item(self, item: JSON) -> Item:
        """An item the model starts: ``conversation.item.added`` (``done_item`` ends it)."""
        previous = self.last_id()
        record = Item(item)
        self.items.append(record)
        self._wire.send(ev.event("conversation.item.added", previous_item_id=previous, item=item))
        return record

    def done_item(self, item: JSON) -> None:
        """``conversation.item.done`` for the item the model started last."""
        previous = self.items[-2].data["id"] if len(self.items) > 1 else None
        self._wire.send(ev.event("conversation.item.done", previous_item_id=previous, item=item))

    # ------------------------------------------------------------------ client events

    def _session_update(self, data: JSON, event_id: str | None) -> None:
        update = data.get("session")
        if not isinstance(update, dict):
            self._wire.error(
                "Missing required parameter: 'session'.",
                "missing_required_parameter",
                event_id,
                param="session",
            )
            return
        before = self.turn_detection
        try:
            self.session = apply_session_update(self.session, update, self.voice_locked)
        except SessionUpdateError as exc:
            self._wire.error(str(exc), exc.code, event_id, param=exc.param)
            return
        if self.turn_detection != before:
            self._on_turn_detection_changed()
        self._wire.send(ev.event("session.updated", session=self.session))

    def _item_create(self, data: JSON, event_id: str | None) -> None:
        item = dict(data["item"])
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            content = item.get("content") or []
            if role == "assistant" and any(
                c.get("type") in ("audio", "output_audio") for c in content
            ):
                self._wire.error(
                    "Assistant audio items cannot be created.",
                    "invalid_value",
                    event_id,
                    param="item.content",
                )
                return
            if role not in ("user", "assistant", "system"):
                self._wire.error(
                    f"Invalid value: '{role}'.", "invalid_value", event_id, param="item.role"
                )
                return
            if role == "user":
                texts = [str(c.get("text", "")) for c in content if c.get("type") == "input_text"]
                if texts:
                    self.user_said(" ".join(texts), audio=False)
        elif kind == "function_call_output":
            call_id = str(item.get("call_id"))
            if call_id not in self.pending_calls:
                self._wire.error(
                    f"Tool call ID '{call_id}' not found in conversation.",
                    "invalid_value",
                    event_id,
                    param="item.call_id",
                )
                return
            self.tool_outputs.append((call_id, str(item.get("output", ""))))
        elif kind != "function_call":
            self._wire.error(
                f"Invalid value: '{kind}'.", "invalid_value", event_id, param="item.type"
            )
            return
        item.setdefault("id", ev.new_id("item"))
        item["object"] = "realtime.item"
        item.setdefault("status", "completed")
        self.add_item(item)

    def found(self, data: JSON, event_id: str | None) -> Item | None:
        """The item a client event's ``item_id`` names (none: the error is sent)."""
        item = self.find(str(data["item_id"]))
        if item is None:
            self._wire.error(
                f"Item with item_id not found: {data['item_id']}",
                "item_not_found",
                event_id,
                param="item_id",
            )
        return item

    def _item_retrieve(self, data: JSON, event_id: str | None) -> None:
        item = self.found(data, event_id)
        if item is not None:
            self._wire.send(ev.event("conversation.item.retrieved", item=item.data))

    def _item_delete(self, data: JSON, event_id: str | None) -> None:
        item = self.found(data, event_id)
        if item is not None:
            self.items.remove(item)
            self._wire.send(ev.event("conversation.item.deleted", item_id=item.data["id"]))

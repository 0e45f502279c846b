"""The deterministic "model": rules that decide what the stand-in says or which tool it calls."""

from __future__ import annotations

import json
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SCRIPT = Path(__file__).with_name("script.toml")


@dataclass(frozen=True, slots=True)
class Rule:
    on_turn: int | None = None
    when_contains: str | None = None
    when_transcript_contains: str | None = None
    """Like ``when_contains`` but only for audio turns (the scripted transcript)."""
    transcript: str | None = None
    """What the stand-in "hears" on audio turn ``on_turn`` (overrides ``transcripts``)."""
    default: bool = False
    say: str | None = None
    call: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    """Several tools called in one response (parallel tool calls): (name, arguments)."""
    preamble: str | None = None
    """Said in the same response before the tool call(s), e.g. "Let me check." (``None``:
    only when the session asks for reasoning; ``""``: never)."""
    then_say: str = "Done: {output}."

    def matches(self, turn: int, text: str, *, audio: bool = False) -> bool:
        if self.default:
            return True
        conditions = (self.on_turn, self.when_contains, self.when_transcript_contains)
        if all(c is None for c in conditions):
            return False
        if self.on_turn is not None and self.on_turn != turn:
            return False
        if self.when_transcript_contains is not None and not (
            audio and self.when_transcript_contains.lower() in text.lower()
        ):
            return False
        return self.when_contains is None or self.when_contains.lower() in text.lower()


@dataclass(frozen=True, slots=True)
class Decision:
    say: str | None = None
    calls: tuple[tuple[str, str], ...] = ()
    """Tools to call, in one response: (name, JSON arguments)."""
    preamble: str | None = None
    then_say: str = ""

    @property
    def call(self) -> str | None:
        """The (first) tool to call, if any."""
        return self.calls[0][0] if self.calls else None

    @property
    def arguments(self) -> str:
        return self.calls[0][1] if self.calls else "{}"


class _Safe(string.Formatter):
    """``str.format`` that only substitutes plain names and never fails."""

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        value = kwargs.get(str(key), "")
        return value if isinstance(value, str | int | float) else json.dumps(value)

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        # ``{output.time}`` is the field ``time`` of the JSON output (same as ``{time}``).
        name = field_name.split("[")[0]
        if name.startswith("output.") and "output_fields" in kwargs:
            fields = kwargs["output_fields"]
            value = fields.get(name.removeprefix("output."), "")
            shown = value if isinstance(value, str | int | float) else json.dumps(value)
            return shown, field_name
        return self.get_value(name.split(".")[0], args, kwargs), field_name


def render(template: str, **values: Any) -> str:
    return _Safe().format(template, **values)


@dataclass(frozen=True, slots=True)
class Script:
    transcripts: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()

    @classmethod
    def load(cls, path: Path | None = None) -> Script:
        data = tomllib.loads((path or DEFAULT_SCRIPT).read_text())
        rules = []
        for raw in data.get("rule", []):
            rules.append(Rule(**_normalise(dict(raw))))
        return cls(tuple(str(t) for t in data.get("transcripts", [])), tuple(rules))

    def transcript(self, audio_turn: int) -> str:
        """What the stand-in "hears" on the ``audio_turn``-th audio turn (1-based)."""
        for rule in self.rules:
            if rule.transcript is not None and rule.on_turn == audio_turn:
                return rule.transcript
        if 1 <= audio_turn <= len(self.transcripts):
            return self.transcripts[audio_turn - 1]
        return ""

    def decide(self, turn: int, text: str, tools: set[str], *, audio: bool = False) -> Decision:
        for rule in self.rules:
            wanted = ((rule.call, rule.arguments),) if rule.call is not None else rule.calls
            if rule.say is None and not wanted and not rule.default:
                continue  # a transcript-only rule decides nothing
            if not rule.matches(turn, text, audio=audio):
                continue
            if wanted:
                if any(name not in tools for name, _ in wanted):
                    continue  # the session did not declare this tool
                calls = tuple((name, json.dumps(args)) for name, args in wanted)
                return Decision(calls=calls, preamble=rule.preamble, then_say=rule.then_say)
            return Decision(say=render(rule.say or "", text=text))
        return Decision(say=render("I heard you say: {text}.", text=text) if text else "Okay.")

    @staticmethod
    def after_tool(then_say: str, *outputs: str) -> str:
        """The answer once the tools' ``outputs`` are in: fields of every JSON output can
        be used (a later output's field wins); ``{output}`` is all of them."""
        values: dict[str, Any] = {}
        for output in outputs:
            try:
                fields = json.loads(output)
            except ValueError:
                fields = {}
            values |= fields if isinstance(fields, dict) else {}
        extra = {k: v for k, v in values.items() if k not in ("output", "output_fields")}
        return render(then_say, output="; ".join(outputs), output_fields=values, **extra)


_ALIASES = {"when_text_contains": "when_contains", "after_tool_say": "then_say"}


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept both spellings of a rule: ``when_text_contains``/``after_tool_say`` and
    ``call = {name = "...", arguments = {...}}`` as well as the short forms."""
    for alias, key in _ALIASES.items():
        if alias in raw:
            if key in raw:
                raise ValueError(f"script rule gives both {alias!r} and {key!r}")
            raw[key] = raw.pop(alias)
    call = raw.get("call")
    if isinstance(call, dict):
        if "arguments" in raw:
            raise ValueError("script rule gives arguments both in `call` and beside it")
        unknown_call = set(call) - {"name", "arguments"}
        if unknown_call or not isinstance(call.get("name"), str):
            raise ValueError('script rule `call` must be {name = "...", arguments = {...}}')
        raw["call"] = call["name"]
        raw["arguments"] = call.get("arguments", {})
    calls = raw.get("calls")
    if calls is not None:
        if "call" in raw or not isinstance(calls, list) or not calls:
            raise ValueError("script rule `calls` must be a non-empty list, without `call`")
        if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
            raise ValueError('script rule `calls` items must be {name = "...", arguments = {...}}')
        raw["calls"] = tuple((c["name"], dict(c.get("arguments", {}))) for c in calls)
    unknown = set(raw) - set(Rule.__dataclass_fields__)
    if unknown:
        raise ValueError(f"script rule has unknown keys: {sorted(unknown)}")
    return raw

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
    default: bool = False
    say: str | None = None
    call: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    then_say: str = "Done: {output}."

    def matches(self, turn: int, text: str) -> bool:
        if self.default:
            return True
        if self.on_turn is None and self.when_contains is None:
            return False
        if self.on_turn is not None and self.on_turn != turn:
            return False
        return self.when_contains is None or self.when_contains.lower() in text.lower()


@dataclass(frozen=True, slots=True)
class Decision:
    say: str | None = None
    call: str | None = None
    arguments: str = "{}"
    then_say: str = ""


class _Safe(string.Formatter):
    """``str.format`` that only substitutes plain names and never fails."""

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        value = kwargs.get(str(key), "")
        return value if isinstance(value, str | int | float) else json.dumps(value)

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        return self.get_value(field_name.split(".")[0].split("[")[0], args, kwargs), field_name


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
            allowed = set(Rule.__dataclass_fields__)
            unknown = set(raw) - allowed
            if unknown:
                raise ValueError(f"script rule has unknown keys: {sorted(unknown)}")
            rules.append(Rule(**raw))
        return cls(tuple(str(t) for t in data.get("transcripts", [])), tuple(rules))

    def transcript(self, audio_turn: int) -> str:
        """What the stand-in "hears" on the ``audio_turn``-th audio turn (1-based)."""
        if 1 <= audio_turn <= len(self.transcripts):
            return self.transcripts[audio_turn - 1]
        return ""

    def decide(self, turn: int, text: str, tools: set[str]) -> Decision:
        for rule in self.rules:
            if not rule.matches(turn, text):
                continue
            if rule.call is not None:
                if rule.call not in tools:
                    continue  # the session did not declare this tool
                return Decision(
                    call=rule.call, arguments=json.dumps(rule.arguments), then_say=rule.then_say
                )
            return Decision(say=render(rule.say or "", text=text))
        return Decision(say=render("I heard you say: {text}.", text=text) if text else "Okay.")

    @staticmethod
    def after_tool(then_say: str, output: str) -> str:
        try:
            fields = json.loads(output)
        except ValueError:
            fields = {}
        values = fields if isinstance(fields, dict) else {}
        return render(then_say, output=output, **{k: v for k, v in values.items() if k != "output"})

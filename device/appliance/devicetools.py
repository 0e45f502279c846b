"""Built-in tools that act on the device, and user tools from Python entry points.

- ``set_volume`` / ``get_volume``: software gain on everything the speaker plays, 0–100,
  persisted in the state directory (``volume.json``) so it survives restarts.
- ``set_timer`` / ``cancel_timer`` / ``list_timers``: when a timer fires, the device says so
  out of band (``conversation: "none"``, ``metadata.kind = "timer"``), connecting first if
  no session is open, waiting until it is idle if the user is talking.
- ``device_status``: what the device is doing, its health counters and versions.
- User tools: any entry point in the group ``appliance.tools`` naming a ``Tool`` (or a
  function returning one or a list of them) is registered at start; a broken one is logged
  and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio.base import AudioSink, SinkWrapper
from appliance.realtime.tools import JSON, Tool, ToolRegistry

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "appliance.tools"
MAX_TIMER_S = 24 * 3600


class Volume:
    """Software volume, 0–100 (0.3 dB a step: 1 is −29.7 dB, 100 is 0 dB), persisted as JSON."""

    def __init__(self, path: Path | None, default: int = 80) -> None:
        self.path = path
        self.level = default
        if path is not None and path.exists():
            try:
                self.level = _clamp(int(json.loads(path.read_text())["level"]))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)

    @property
    def gain(self) -> float:
        if self.level <= 0:
            return 0.0
        return float(10 ** ((self.level - 100) * 0.3 / 20))  # 100 → 0 dB, 1 → −29.7 dB

    def set(self, level: int) -> int:
        self.level = _clamp(level)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".volume-")
            with os.fdopen(fd, "w") as handle:
                json.dump({"level": self.level}, handle)
            os.replace(tmp, self.path)
        return self.level


def _clamp(level: int) -> int:
    return max(0, min(100, level))


class GainSink(SinkWrapper):
    """Applies the volume to every frame before the speaker (and the echo tap) sees it."""

    def __init__(self, sink: AudioSink, volume: Volume) -> None:
        super().__init__(sink)
        self.volume = volume

    async def write(self, frame: bytes) -> None:
        gain = self.volume.gain
        if gain != 1.0:
            samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) * gain
            frame = np.clip(samples, -32768, 32767).astype("<i2").tobytes()
        await self.sink.write(frame)


@dataclass
class _Timer:
    id: int
    label: str
    ends_at: float
    handle: asyncio.TimerHandle


class Timers:
    """Kitchen timers. ``on_fire(label)`` is called on the loop when one ends."""

    def __init__(self, on_fire: Callable[[str], None]) -> None:
        self._on_fire = on_fire
        self._timers: dict[int, _Timer] = {}
        self._next = 1

    def set(self, seconds: float, label: str = "") -> JSON:
        if not 1 <= seconds <= MAX_TIMER_S:
            raise ValueError(f"seconds must be between 1 and {MAX_TIMER_S}")
        loop = asyncio.get_running_loop()
        timer_id = self._next
        self._next += 1
        label = label.strip() or f"{_spoken(seconds)} timer"
        handle = loop.call_later(seconds, self._fire, timer_id)
        self._timers[timer_id] = _Timer(timer_id, label, time.time() + seconds, handle)
        log.info("timer %d set: %s in %.0f s", timer_id, label, seconds)
        return {"id": timer_id, "label": label, "seconds": seconds}

    def _fire(self, timer_id: int) -> None:
        timer = self._timers.pop(timer_id, None)
        if timer is not None:
            log.info("timer %d fired: %s", timer_id, timer.label)
            self._on_fire(timer.label)

    def cancel(self, timer_id: int | None = None, label: str = "") -> JSON:
        chosen = [
            t
            for t in self._timers.values()
            if (timer_id is not None and t.id == timer_id)
            or (timer_id is None and (not label or label.lower() in t.label.lower()))
        ]
        for timer in chosen:
            timer.handle.cancel()
            del self._timers[timer.id]
        return {"cancelled": [t.label for t in chosen]}

    def list(self) -> JSON:
        now = time.time()
        return {
            "timers": [
                {"id": t.id, "label": t.label, "remaining_s": round(t.ends_at - now)}
                for t in sorted(self._timers.values(), key=lambda t: t.ends_at)
            ]
        }

    def close(self) -> None:
        for timer in self._timers.values():
            timer.handle.cancel()
        self._timers.clear()


def _spoken(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} hour"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} minute"
    return f"{seconds:g} second"


def register_device_tools(
    registry: ToolRegistry,
    *,
    volume: Volume,
    timers: Timers,
    status: Callable[[], JSON],
) -> None:
    def set_volume(level: int) -> JSON:
        return {"level": volume.set(int(level))}

    registry.register(
        Tool(
            "set_volume",
            "Set the speaker volume of this device, 0 (silent) to 100 (loudest).",
            set_volume,
            {
                "type": "object",
                "properties": {"level": {"type": "integer", "minimum": 0, "maximum": 100}},
                "required": ["level"],
            },
        )
    )
    registry.register(
        Tool(
            "get_volume",
            "Get the speaker volume of this device (0–100).",
            lambda: {"level": volume.level},
        )
    )

    async def set_timer(seconds: float, label: str = "") -> JSON:
        return timers.set(float(seconds), str(label))

    registry.register(
        Tool(
            "set_timer",
            "Start a timer on this device; it says so out loud when the time is up.",
            set_timer,
            {
                "type": "object",
                "properties": {
                    "seconds": {"type": "number", "minimum": 1, "maximum": MAX_TIMER_S},
                    "label": {"type": "string", "description": "e.g. 'pasta'"},
                },
                "required": ["seconds"],
            },
        )
    )

    async def cancel_timer(label: str = "", id: int | None = None) -> JSON:
        return timers.cancel(id, label)

    registry.register(
        Tool(
            "cancel_timer",
            "Cancel timers by label (all timers when no label is given) or id.",
            cancel_timer,
            {
                "type": "object",
                "properties": {"label": {"type": "string"}, "id": {"type": "integer"}},
            },
        )
    )

    async def list_timers() -> JSON:
        return timers.list()

    registry.register(Tool("list_timers", "List running timers.", list_timers))
    registry.register(
        Tool("device_status", "What this device is doing and how healthy it is.", status)
    )


def load_entry_point_tools(registry: ToolRegistry, group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Register user tools from installed packages; returns the names registered."""
    added: list[str] = []
    for point in entry_points(group=group):
        try:
            value: Any = point.load()
            if callable(value) and not isinstance(value, Tool):
                value = value()
            tools = value if isinstance(value, list | tuple) else [value]
            for tool in tools:
                if not isinstance(tool, Tool):
                    raise TypeError(f"{type(tool).__name__} is not an appliance Tool")
                registry.register(tool)
                added.append(tool.name)
        except Exception as exc:  # a user's plug-in must not stop the device
            log.error("tool entry point %s failed to load: %s", point.name, exc)
    return added

"""LEDs are level-triggered: they always show the current state, from one table.

``PATTERNS`` maps every ``State`` to a ``Pattern``; drivers (gpiozero LEDs here, APA102 in
board profiles) only know how to show a pattern. Nothing accumulates: showing a state twice
is the same as showing it once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.machine import State


class Kind(enum.Enum):
    OFF = "off"
    SOLID = "solid"
    PULSE = "pulse"
    BLINK = "blink"
    SPIN = "spin"


@dataclass(frozen=True, slots=True)
class Pattern:
    kind: Kind
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB, each 0–1 (single-colour LEDs use the brightest channel)."""
    period_s: float = 1.0


PATTERNS: dict[State, Pattern] = {
    State.IDLE: Pattern(Kind.OFF),
    State.CONNECTING: Pattern(Kind.SPIN, (0.0, 0.4, 1.0), 0.8),
    State.LISTENING: Pattern(Kind.SOLID, (0.0, 0.4, 1.0)),
    State.THINKING: Pattern(Kind.PULSE, (0.6, 0.0, 1.0), 1.0),
    State.SPEAKING: Pattern(Kind.PULSE, (0.0, 1.0, 0.3), 0.5),
    State.ERROR: Pattern(Kind.BLINK, (1.0, 0.0, 0.0), 0.4),
    State.OFFLINE: Pattern(Kind.BLINK, (1.0, 0.5, 0.0), 2.0),
    State.MUTED: Pattern(Kind.SOLID, (1.0, 0.0, 0.0)),
}


class LedDriver(Protocol):
    def show(self, pattern: Pattern) -> None: ...

    def close(self) -> None: ...


class GpioLeds:
    """One gpiozero LED, PWMLED or RGBLED (pin factory chosen by gpiozero: real or mock)."""

    def __init__(self, device: Any) -> None:
        self._device = device
        self._rgb = hasattr(device, "red")
        self.shown: Pattern | None = None

    def show(self, pattern: Pattern) -> None:
        if pattern == self.shown:
            return  # level-triggered: already showing it
        self.shown = pattern
        dev = self._device
        level: Any = pattern.color if self._rgb else max(pattern.color)
        on = level if self._rgb or _pwm(dev) else 1
        half = pattern.period_s / 2
        match pattern.kind:
            case Kind.OFF:
                dev.off()
            case Kind.SOLID:
                dev.value = on
            case Kind.BLINK | Kind.SPIN:
                kwargs = {"on_color": level} if self._rgb else {}
                dev.blink(on_time=half, off_time=half, **kwargs)
            case Kind.PULSE if self._rgb or _pwm(dev):
                kwargs = {"on_color": level} if self._rgb else {}
                dev.pulse(fade_in_time=half, fade_out_time=half, **kwargs)
            case Kind.PULSE:
                dev.blink(on_time=half, off_time=half)

    def close(self) -> None:
        self._device.close()


def _pwm(device: Any) -> bool:
    return hasattr(device, "pulse")

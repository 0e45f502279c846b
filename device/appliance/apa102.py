"""APA102 LED strips/rings (ReSpeaker HATs) over SPI, through gpiozero's SPI support.

``frame(pattern, t, count)`` is pure: the colours every LED shows at time ``t`` for a
pattern (solid, pulse, blink, spin, off). ``Apa102Leds`` renders it on a background thread
at 25 fps and writes APA102 frames (start frame, one ``0xE0|brightness, B, G, R`` word per
LED, end frame) to the SPI bus. gpiozero's ``MockFactory`` bit-bangs the same bytes onto
mock pins in tests.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from appliance.leds import Kind, Pattern

Pixel = tuple[int, int, int]  # r, g, b 0-255
FPS = 25


def frame(pattern: Pattern, t: float, count: int) -> list[Pixel]:
    """What each of ``count`` LEDs shows at ``t`` seconds into ``pattern``."""
    r, g, b = (round(255 * c) for c in pattern.color)
    period = max(pattern.period_s, 1e-3)
    phase = (t % period) / period
    match pattern.kind:
        case Kind.OFF:
            return [(0, 0, 0)] * count
        case Kind.SOLID:
            return [(r, g, b)] * count
        case Kind.BLINK:
            return [(r, g, b) if phase < 0.5 else (0, 0, 0)] * count
        case Kind.PULSE:
            level = 0.5 - 0.5 * math.cos(2 * math.pi * phase)
            return [(round(r * level), round(g * level), round(b * level))] * count
        case Kind.SPIN:
            head = int(phase * count) % count
            return [(r, g, b) if i == head else (r // 8, g // 8, b // 8) for i in range(count)]


def encode(pixels: list[Pixel], brightness: int = 31) -> bytes:
    """The APA102 wire format for one refresh."""
    data = bytearray(4)  # start frame
    for r, g, b in pixels:
        data += bytes((0xE0 | (brightness & 0x1F), b, g, r))
    data += b"\xff" * max(4, (len(pixels) + 15) // 16)  # end frame: enough clock edges
    return bytes(data)


class Apa102Leds:
    """A ``LedDriver`` for ``count`` APA102 LEDs on SPI0 (optionally powered by a GPIO)."""

    def __init__(self, count: int, power_pin: int | None = None, brightness: int = 16) -> None:
        from gpiozero import Device

        self.count = count
        self.brightness = brightness
        Device.ensure_pin_factory()  # public: what every gpiozero device does on creation
        # the factory's SPI interface (hardware SPI0 on a Pi, bit-banged mock pins in tests)
        self._spi: Any = Device.pin_factory.spi(port=0, device=0)
        self._bus = threading.Lock()
        """One refresh on the wire at a time: ``show`` (caller's thread) and the animation."""
        self._power: Any = None
        if power_pin is not None:
            from gpiozero import DigitalOutputDevice

            self._power = DigitalOutputDevice(power_pin, initial_value=True)
        self._pattern = Pattern(Kind.OFF)
        self._changed = threading.Event()
        self._stop = threading.Event()
        self.written: list[bytes] = []
        """The last few refreshes sent (kept short; for diagnostics and tests)."""
        self._write(frame(self._pattern, 0.0, count))
        self._thread = threading.Thread(target=self._animate, name="apa102", daemon=True)
        self._thread.start()

    def _write(self, pixels: list[Pixel]) -> None:
        data = encode(pixels, self.brightness)
        with self._bus:
            self._spi.write(list(data))
            self.written = [*self.written[-9:], data]

    def show(self, pattern: Pattern) -> None:
        if pattern == self._pattern:
            return  # level-triggered
        self._pattern = pattern
        self._write(frame(pattern, 0.0, self.count))
        self._changed.set()

    def _animate(self) -> None:
        t = 0.0
        while not self._stop.is_set():
            if self._changed.is_set():
                self._changed.clear()
                t = 0.0
            pattern = self._pattern
            if pattern.kind in (Kind.OFF, Kind.SOLID):
                self._changed.wait(0.5)
                continue
            self._stop.wait(1 / FPS)
            t += 1 / FPS
            if not self._changed.is_set() and not self._stop.is_set():
                self._write(frame(pattern, t, self.count))

    def close(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(timeout=1)
        self._write([(0, 0, 0)] * self.count)
        self._spi.close()
        if self._power is not None:
            self._power.close()

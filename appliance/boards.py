"""Board profiles: which pins the button and LEDs use, selected by ``device.board``.

See ``hw/`` for wiring. APA102 LED rings (ReSpeaker) are listed here; until their SPI
driver lands those boards show state on no LED (logged once at start).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BoardProfile:
    name: str
    button_pin: int | None
    """BCM pin of the push button (active low, internal pull-up)."""
    led_pin: int | None = None
    """BCM pin of a single (PWM) status LED."""
    rgb_pins: tuple[int, int, int] | None = None
    """BCM pins of a common-cathode RGB LED."""
    apa102_count: int = 0
    """Number of APA102 LEDs on SPI0 (ReSpeaker HATs)."""
    led_power_pin: int | None = None
    """BCM pin that powers the LED ring (ReSpeaker 4-mic: GPIO5)."""


PROFILES: dict[str, BoardProfile] = {
    "generic": BoardProfile("generic", button_pin=17, led_pin=25),
    "mock": BoardProfile("mock", button_pin=17, led_pin=25),
    "respeaker-2mic": BoardProfile("respeaker-2mic", button_pin=17, apa102_count=3),
    "respeaker-4mic": BoardProfile(
        "respeaker-4mic", button_pin=None, apa102_count=12, led_power_pin=5
    ),
    "aiy-voice": BoardProfile("aiy-voice", button_pin=23, led_pin=25),
}

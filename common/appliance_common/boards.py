"""Board profiles: which pins the button and LEDs use, selected by ``device.board``.

Shared by the device (which drives the pins: ``appliance.boards``) and the fleet tooling
(whose bundles start from each board's example config). See ``hw/`` for wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    mic_field: str = "near_field"
    """Where the mic usually is, for the service's noise reduction: ``near_field`` (a USB
    or headset mic close to the speaker's mouth) or ``far_field`` (a HAT's mic array
    hearing the room from across it)."""


PROFILES: dict[str, BoardProfile] = {
    "generic": BoardProfile("generic", button_pin=17, led_pin=25),
    "generic-rgb": BoardProfile("generic-rgb", button_pin=17, rgb_pins=(5, 6, 13)),
    "mock": BoardProfile("mock", button_pin=17, led_pin=25),
    "respeaker-2mic": BoardProfile(
        "respeaker-2mic", button_pin=17, apa102_count=3, mic_field="far_field"
    ),
    "respeaker-4mic": BoardProfile(
        "respeaker-4mic", button_pin=None, apa102_count=12, led_power_pin=5, mic_field="far_field"
    ),
    "aiy-voice": BoardProfile("aiy-voice", button_pin=23, led_pin=25, mic_field="far_field"),
}


def board_config(name: str) -> dict[str, Any]:
    """The board's example ``appliance.toml`` (``board_configs/<name>.toml`` here), parsed;
    ``KeyError`` for a board without a profile."""
    import tomllib
    from importlib import resources

    if name not in PROFILES:
        raise KeyError(name)
    files = resources.files("appliance_common.board_configs")
    path = files / f"{name}.toml"
    if not path.is_file():  # mock: no file, nothing to start from
        return {}
    return tomllib.loads(path.read_text())

"""The board's status LEDs (profiles: ``appliance_common.boards``; wiring: ``hw/``).

APA102 LED rings (ReSpeaker) are driven over SPI0 by ``appliance.apa102``; single and RGB
LEDs through gpiozero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance_common.boards import PROFILES, BoardProfile, board_config

if TYPE_CHECKING:
    from appliance.leds import LedDriver

__all__ = ["PROFILES", "BoardProfile", "board_config", "make_leds"]


def make_leds(board: BoardProfile) -> LedDriver | None:
    """The board's status LEDs through gpiozero's pin factory (lgpio on a Pi, mock in tests)."""
    from gpiozero import LED, PWMLED, RGBLED
    from gpiozero.exc import GPIOZeroError

    from appliance.leds import GpioLeds

    if board.rgb_pins is not None:
        return GpioLeds(RGBLED(*board.rgb_pins))
    if board.led_pin is not None:
        try:
            return GpioLeds(PWMLED(board.led_pin))
        except GPIOZeroError:  # no PWM on this pin factory: plain on/off
            return GpioLeds(LED(board.led_pin))
    if board.apa102_count:
        from appliance.apa102 import Apa102Leds

        return Apa102Leds(board.apa102_count, board.led_power_pin)
    return None

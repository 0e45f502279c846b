"""Button and LEDs on gpiozero's own MockFactory."""

from __future__ import annotations

import asyncio

import pytest
from gpiozero import PWMLED, RGBLED, Button
from gpiozero.pins.mock import MockFactory

from appliance import machine as m
from appliance.button import ButtonEvents
from appliance.leds import PATTERNS, GpioLeds, Kind
from tests.waiting import Recorded, any_pin_changes


@pytest.fixture
def factory(mock_pins: MockFactory) -> MockFactory:
    return mock_pins


async def test_long_press_toggles_mute(factory: MockFactory) -> None:
    events: Recorded[m.Event] = Recorded()
    loop = asyncio.get_running_loop()
    button = ButtonEvents(Button(17, hold_time=0.1), loop, events.append, mute_s=0.3)
    pin = factory.pin(17)
    pin.drive_low()
    await events.first(lambda e: e == m.MuteToggled(), "muted by the long press")
    pin.drive_high()
    await events.first(lambda e: e == m.ButtonReleased(), "the release")
    assert events == [m.ButtonPressed(), m.ButtonHeld(), m.MuteToggled(), m.ButtonReleased()]
    snap = m.Snapshot()
    for event in events:
        snap, _ = m.Machine().step(snap, event)
    assert snap.state is m.State.MUTED
    assert not snap.session_open
    button.close()


async def test_button_press_hold_release_become_events(factory: MockFactory) -> None:
    events: Recorded[m.Event] = Recorded()
    button = ButtonEvents(Button(17, hold_time=0.1), asyncio.get_running_loop(), events.append)
    pin = factory.pin(17)
    pin.drive_low()
    await events.first(lambda e: e == m.ButtonHeld(), "the hold")
    pin.drive_high()
    await events.first(lambda e: e == m.ButtonReleased(), "the release")
    assert events == [m.ButtonPressed(), m.ButtonHeld(), m.ButtonReleased()]
    events.clear()
    pin.drive_low()
    pin.drive_high()
    await events.first(lambda e: e == m.ButtonReleased(), "the tap's release")
    assert events == [m.ButtonPressed(), m.ButtonReleased()], "a tap is never held"
    button.close()


@pytest.mark.parametrize("state", list(m.State))
async def test_every_state_has_a_visible_pattern_on_a_pwm_led(
    factory: MockFactory, state: m.State
) -> None:
    leds = GpioLeds(PWMLED(25))
    pattern = PATTERNS[state]
    leds.show(pattern)
    pin = factory.pin(25)
    if pattern.kind is Kind.OFF:
        assert pin.state == 0
    elif pattern.kind is Kind.SOLID:
        assert pin.state == pytest.approx(max(pattern.color))
    else:  # blinking/pulsing: the LED changes over time
        await any_pin_changes([pin])
    leds.close()


def test_rgb_led_shows_the_state_colour(factory: MockFactory) -> None:
    leds = GpioLeds(RGBLED(5, 6, 13))
    leds.show(PATTERNS[m.State.LISTENING])
    assert (factory.pin(5).state, factory.pin(6).state, factory.pin(13).state) == pytest.approx(
        PATTERNS[m.State.LISTENING].color
    )
    leds.show(PATTERNS[m.State.IDLE])
    assert (factory.pin(5).state, factory.pin(6).state, factory.pin(13).state) == (0, 0, 0)
    leds.close()


def test_leds_are_level_triggered(factory: MockFactory) -> None:
    leds = GpioLeds(PWMLED(25))
    leds.show(PATTERNS[m.State.MUTED])
    leds.show(PATTERNS[m.State.MUTED])
    assert factory.pin(25).state == pytest.approx(1.0)
    leds.show(PATTERNS[m.State.IDLE])
    assert factory.pin(25).state == 0
    leds.close()

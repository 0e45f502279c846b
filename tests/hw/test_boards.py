"""Every board profile shows every state: GPIO LEDs read from MockFactory pins, APA102 rings
decoded from the bits gpiozero's mock SPI bus carried."""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin, MockSPIDevice

from appliance.apa102 import encode, frame
from appliance.boards import PROFILES, make_leds
from appliance.leds import PATTERNS, Kind
from appliance.machine import State
from tests.conftest import require_tool
from tests.waiting import any_pin_changes, observe


@pytest.fixture
def pins(request: pytest.FixtureRequest) -> Iterator[MockFactory]:
    saved = Device.pin_factory
    pwm = request.param
    Device.pin_factory = MockFactory(pin_class=MockPWMPin if pwm else MockPin)
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = saved


def bits_to_bytes(bits: list[int]) -> bytes:
    return bytes(
        int("".join(str(int(b)) for b in bits[i : i + 8]), 2) for i in range(0, len(bits) - 7, 8)
    )


APA102_BOARDS = [name for name, b in PROFILES.items() if b.apa102_count]
GPIO_BOARDS = [name for name, b in PROFILES.items() if b.led_pin or b.rgb_pins]


@pytest.mark.parametrize("pins", [False], indirect=True)
@pytest.mark.parametrize("board", APA102_BOARDS)
@pytest.mark.parametrize("state", list(State))
async def test_apa102_boards_show_every_state(pins: MockFactory, board: str, state: State) -> None:
    profile = PROFILES[board]
    bus = MockSPIDevice(11, 10, 9, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mock pins: gpiozero falls back to software SPI
        leds = make_leds(profile)
    assert leds is not None
    leds.show(PATTERNS[State.MUTED if state is not State.MUTED else State.IDLE])
    bus.rx_buf.clear()
    pattern = PATTERNS[state]
    leds.show(pattern)
    sent = bits_to_bytes(bus.rx_buf)
    expected = encode(frame(pattern, 0.0, profile.apa102_count), 16)
    assert sent[: len(expected)] == expected
    if profile.led_power_pin is not None:
        assert pins.pin(profile.led_power_pin).state == 1, "LED ring powered"
    if pattern.kind in (Kind.PULSE, Kind.BLINK, Kind.SPIN):
        bus.rx_buf.clear()
        clock = observe(pins.pin(11), "states")  # the SPI clock ticks for every bit sent
        await clock.until(lambda _: bool(bits_to_bytes(bus.rx_buf)), "a later refresh")
        assert bits_to_bytes(bus.rx_buf), "animated patterns keep refreshing"
    leds.close()
    bus.close()


@pytest.mark.parametrize("pins", [True], indirect=True)
@pytest.mark.parametrize("board", GPIO_BOARDS)
@pytest.mark.parametrize("state", list(State))
async def test_gpio_boards_show_every_state(pins: MockFactory, board: str, state: State) -> None:
    profile = PROFILES[board]
    leds = make_leds(profile)
    assert leds is not None
    pattern = PATTERNS[state]
    leds.show(pattern)
    led_pins: list[int] = list(profile.rgb_pins or ()) or [profile.led_pin or 0]
    levels = [pins.pin(p).state for p in led_pins]
    if pattern.kind is Kind.OFF:
        assert levels == [0] * len(levels)
    elif pattern.kind is Kind.SOLID:
        want = list(pattern.color) if profile.rgb_pins else [max(pattern.color)]
        assert levels == pytest.approx(want)
    else:  # blinking/pulsing changes over time
        await any_pin_changes(pins.pin(p) for p in led_pins)
    leds.close()


def test_frames_are_pure_and_level_triggered() -> None:
    spin = PATTERNS[State.CONNECTING]
    assert frame(spin, 0.0, 12) == frame(spin, 0.0, 12)
    assert frame(spin, 0.0, 12) != frame(spin, spin.period_s / 2, 12)
    assert frame(PATTERNS[State.IDLE], 3.0, 3) == [(0, 0, 0)] * 3
    assert encode([(255, 0, 0)], 31)[4:8] == bytes((0xFF, 0, 0, 255))


def test_the_shared_alsa_example_parses_and_names_the_appliance_pcms(tmp_path: Path) -> None:
    aplay = require_tool("aplay")
    example = Path(__file__).resolve().parents[2] / "hw" / "asound.conf.example"
    (tmp_path / ".asoundrc").write_text(example.read_text())
    listed = subprocess.run(
        [aplay, "-L"],
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    names = listed.stdout.split()
    for pcm in ("appliance_mic", "appliance_speaker", "appliance_dsnoop", "appliance_dmix"):
        assert pcm in names
    assert "parse error" not in listed.stderr.lower()

"""A microphone that vanishes and comes back (USB unplug): no crash, the fault shown, then
back to normal on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance import machine as m
from appliance.audio.base import AudioFormat
from appliance.audio.wav import WavSink, WavSource
from appliance.errors import AudioDeviceError
from standin import StandIn, StandInConfig
from tests.e2e.harness import device
from tests.standin.conftest import API_KEY

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in


class UnpluggedMic(WavSource):
    """A WAV mic whose device disappears after ``works_for`` frames and refuses to open
    ``missing_for`` times before it is plugged back in."""

    def __init__(self, works_for: int, missing_for: int) -> None:
        super().__init__(None, AudioFormat(16_000))
        self.works_for = works_for
        self.missing_for = missing_for
        self.reads = 0
        self.opens = 0

    async def start(self) -> None:
        self.opens += 1
        if self.opens > 1 and self.missing_for > 0:
            self.missing_for -= 1
            raise AudioDeviceError("cannot open capture device usb-mic: No such device")
        await super().start()

    async def read(self) -> bytes:
        self.reads += 1
        if self.reads == self.works_for:
            raise AudioDeviceError("capture stalled for 2 s (device gone?)")
        return await super().read()


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


async def test_an_unplugged_mic_shows_the_fault_and_recovers_by_itself(
    standin: StandIn, tmp_path: Path
) -> None:
    mic = UnpluggedMic(works_for=10, missing_for=2)
    async with device(standin, tmp_path, source=mic) as dev:
        await dev.wait(m.State.ERROR, 5)
        assert dev.app.snapshot.audio_fault
        assert dev.app.status_text().startswith("error: microphone")
        clock = dev.app.last_audio
        dev.app.post(m.ButtonPressed())  # nothing to talk with: ignored
        await dev.wait(m.State.IDLE, 10)  # 1 s + 2 s of back-off, then the mic is back
        assert dev.app.last_audio > clock, "the watchdog stays fed while it retries"
        assert mic.opens == 4
        assert dev.app.last_error == ""
        await dev.push_to_talk()
        await dev.wait(m.State.SPEAKING, 20)
        await dev.wait(m.State.IDLE, 20)
    states = dev.states()
    assert states[:2] == [m.State.ERROR, m.State.IDLE], "the press during the fault did nothing"
    assert dev.app.stats.turns == 1


class UnpluggedSpeaker(WavSink):
    """A WAV speaker whose device disappears at the ``works_for``-th frame and refuses to
    open ``missing_for`` times before it is plugged back in."""

    def __init__(self, works_for: int, missing_for: int) -> None:
        super().__init__(None, AudioFormat(48_000))
        self.works_for = works_for
        self.missing_for = missing_for
        self.writes = 0
        self.opens = 0

    async def start(self) -> None:
        self.opens += 1
        if self.opens > 1 and self.missing_for > 0:
            self.missing_for -= 1
            raise AudioDeviceError("cannot open playback device usb-speaker: No such device")
        await super().start()

    async def write(self, frame: bytes) -> None:
        self.writes += 1
        if self.writes == self.works_for:
            raise AudioDeviceError("playback stream stopped (device gone?)")
        await super().write(frame)


async def test_an_unplugged_speaker_during_a_call_shows_the_fault_and_recovers(
    standin: StandIn, tmp_path: Path
) -> None:
    speaker = UnpluggedSpeaker(works_for=100, missing_for=1)  # 2 s into the call
    async with device(standin, tmp_path, sink=speaker) as dev:
        await dev.push_to_talk()
        await dev.wait(m.State.ERROR, 20)
        assert dev.app.status_text().startswith("error: speaker")
        await dev.wait(m.State.IDLE, 10)  # 1 s + 2 s of back-off, then it is back
        assert speaker.opens == 3
        await dev.push_to_talk("question-time.wav")
        await dev.wait(m.State.SPEAKING, 20)
        await dev.wait(m.State.IDLE, 20)
    assert dev.app.stats.turns >= 1
    assert speaker.writes > 100, "playback went on after the device came back"

"""The device in a simulated room: its reply echoes back into its own mic.

It must never interrupt itself (neither by its local speech gate nor through the service's
VAD, which hears the uplink in full duplex), and it must still hear the user who talks over
the reply (barge-in), all on the real capture path: Speex AEC + preprocessor, webrtcvad.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance import machine as m
from appliance.config import ActivationConfig, AudioConfig
from appliance_dev.simroom import SimRoom
from standin import StandIn, StandInConfig
from tests.conftest import require
from tests.e2e.harness import client_events, device
from tests.speech import speech
from tests.standin.conftest import API_KEY

pytestmark = pytest.mark.slow  # a whole device in real time against the stand-in

LONG_REPLY = (
    "The moon has no air to hold the heat of the sun. By day the ground gets hotter than "
    "boiling water, and at night it gets colder than anywhere on Earth. A day there lasts "
    "about two weeks, and so does a night, which makes the swings even larger."
)
SCRIPT = f"""
transcripts = ["tell me about the moon", "tell me more about the moon", "stop"]

[[rule]]
when_contains = "moon"
say = "{LONG_REPLY}"

[[rule]]
default = true
say = "Okay."
"""


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StandIn]:
    require(ctypes.util.find_library("speexdsp") is not None, "libspeexdsp (apt libspeexdsp1)")
    script = tmp_path / "script.toml"
    script.write_text(SCRIPT)
    async with StandIn(StandInConfig(api_key=API_KEY, script=script)) as server:
        yield server


async def _ask(dev: object, room: SimRoom, text: str) -> None:
    app = dev.app  # type: ignore[attr-defined]
    app.post(m.ButtonPressed())
    app.post(m.ButtonReleased())  # a tap: hands-free, the service's VAD ends the turn
    await dev.wait(m.State.LISTENING)  # type: ignore[attr-defined]
    room.say(speech(text, 16_000))


@pytest.mark.parametrize(
    "room",
    [SimRoom(seed=3), SimRoom(seed=11, delay_ms=70, rt60_s=0.4, drr_db=3, echo_gain=0.7)],
    ids=["small-room", "reverberant-room"],
)
async def test_the_device_never_hears_itself_but_hears_the_user_over_its_reply(
    standin: StandIn, tmp_path: Path, room: SimRoom
) -> None:
    audio = AudioConfig(backend="wav", aec="speex")
    async with device(standin, tmp_path, audio, room.mic, room.speaker) as dev:
        assert dev.app.frontend is not None
        assert dev.app.frontend.echo.name == "speex"
        # turn 1: the whole long reply plays into the room; the canceller converges on it
        await _ask(dev, room, "tell me about the moon")
        await dev.wait(m.State.SPEAKING, 20)
        await dev.wait(m.State.IDLE, 40)
        assert dev.app.barge_ins == 0, "the device interrupted itself"
        assert dev.app.frontend.converged
        # turn 2: full duplex now; the reply echoes into the open uplink and must go on
        await _ask(dev, room, "tell me more about the moon")
        await dev.wait(m.State.SPEAKING, 20)
        assert dev.app.mic.uplink_open, "full duplex: the service hears the room"
        await room.mic.until_read(room.mic.frames_read + 150)  # 3 s of its echo in the mic
        assert dev.app.snapshot.state is m.State.SPEAKING, "its own voice cut the reply"
        assert dev.app.barge_ins == 0
        # the user talks over the reply: heard at once, the reply stops
        spoke = room.mic.frames_read
        room.say(speech("stop", 16_000) // 3)  # 10 dB quieter than the questions
        await dev.wait(m.State.LISTENING, 10)
        reaction_frames = room.mic.frames_read - spoke  # on the mic's clock, not the machine's
        assert dev.app.barge_ins == 1, "heard locally, through the echo"
        await dev.wait(m.State.IDLE, 30)
    turn_states = dev.states()
    speaking = [i for i, s in enumerate(turn_states) if s is m.State.SPEAKING]
    assert turn_states[speaking[0] + 1] is m.State.IDLE, "reply 1 ran to its end"
    assert reaction_frames <= 30, f"barge-in took {reaction_frames * 20} ms of audio"
    sent = [e["type"] for e in client_events(standin)]
    assert "response.cancel" in sent
    assert "conversation.item.truncate" in sent
    assert room.played_frames > 200, "the replies really played into the room"


async def test_the_wake_word_starts_a_turn_and_cuts_a_long_reply(
    standin: StandIn, tmp_path: Path
) -> None:
    require(importlib.util.find_spec("pymicro_wakeword") is not None, "pymicro-wakeword")
    room = SimRoom(seed=5)
    audio = AudioConfig(backend="wav", aec="speex")
    # voice barge-in off: here only the wake word may cut the reply
    wake = ActivationConfig(wake_word="okay_nabu", button=False, barge_in=False)
    okay_nabu = speech("okay nabu", 16_000)
    async with device(
        standin, tmp_path, audio, room.mic, room.speaker, wake, no_speech_s=2.0
    ) as dev:
        await room.mic.until_read(25)  # the gate and the wake word warm up on room noise
        # woken, but nobody speaks: back to IDLE, counted as a false wake
        room.say(okay_nabu)
        await dev.wait(m.State.LISTENING, 10)
        await dev.wait(m.State.IDLE, 10)
        assert (dev.app.stats.wakes, dev.app.stats.false_wakes) == (1, 0 + 1)
        # woken, then a question: the long reply plays …
        room.say(okay_nabu)
        await dev.wait(m.State.LISTENING, 10)
        room.say(speech("tell me about the moon", 16_000))
        await dev.wait(m.State.SPEAKING, 20)
        await room.mic.until_read(room.mic.frames_read + 200)  # 4 s of the reply's echo
        assert dev.app.snapshot.state is m.State.SPEAKING
        # … until the wake word is said over it, heard through the echo canceller
        room.say(okay_nabu)
        await dev.wait(m.State.LISTENING, 4)
        assert dev.app.stats.wakes == 3
        assert dev.app.stats.false_wakes == 1
        assert dev.app.barge_ins == 0
    sent = [e["type"] for e in client_events(standin)]
    assert "response.cancel" in sent

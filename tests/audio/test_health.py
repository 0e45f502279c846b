"""AEC health in the field: what the front end counts and the heartbeat reports."""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.audio import aec
from appliance.audio.base import AudioFormat
from appliance.audio.frontend import FrontEnd
from appliance_dev import roomset
from appliance_dev.bench.audio import StreamClock, front_end, play


def _played(
    condition: str, seed: int, guard: bool, tail_ms: int = 300
) -> tuple[FrontEnd, list[int]]:
    scene = roomset.make_hard_scene(seed, condition)
    clock = StreamClock()
    fe = front_end("speex", guard, clock, tail_ms)
    _, started, _, _ = asyncio.run(play(fe, scene, clock))
    return fe, started


@pytest.fixture
def linear_speaker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The canceller models the speaker as linear (it is not, in the hard rooms)."""
    monkeypatch.setattr(aec, "SPEAKER_DRIVES", (0.0,))


@pytest.mark.usefixtures("linear_speaker")
def test_echo_taken_for_the_user_is_counted_as_a_suspected_self_interruption() -> None:
    """With a linear speaker model and a short tail, a clipping speaker's loud onset fools
    the barge-in decision in this room; once the "turn" ends, the mic never showed more
    than the echo model explains: suspected."""
    fe, started = _played("hard", 6, guard=True, tail_ms=200)
    onset = 8.86
    own = [f for f in started if f * 0.02 < onset]
    assert len(own) == 2  # the device interrupted itself twice
    assert fe.health.barge_ins == len(started) == 3  # and heard the user at 8.96 s
    assert fe.health.suspected_self_interruptions == 2
    assert 11.0 < fe.health.playback_s <= 12.0
    fe.close()


@pytest.mark.parametrize(("condition", "seed"), [("bench", 1), ("hard", 0)])
def test_a_real_barge_in_is_not_suspected(condition: str, seed: int) -> None:
    """Also with the speaker 10 dB louder than the user (hard 0)."""
    fe, started = _played(condition, seed, guard=True)
    assert len(started) == 1
    assert fe.health.barge_ins == 1
    assert fe.health.suspected_self_interruptions == 0
    fe.close()


@pytest.mark.usefixtures("linear_speaker")
def test_heartbeat_reports_echo_health_per_hour() -> None:
    from appliance.app import App
    from appliance.audio.wav import WavSink, WavSource
    from appliance.config import Config
    from appliance.heartbeat import health
    from appliance.realtime.keys import EphemeralKey, StaticKeySource
    from appliance.realtime.tools import builtin_registry

    fe, _ = _played("hard", 6, guard=True, tail_ms=200)
    app = App(
        Config(),
        source=WavSource(None, AudioFormat()),
        sink=WavSink(None, AudioFormat()),
        keys=StaticKeySource(EphemeralKey("ek_x", 0, "http://x")),
        tools=builtin_registry(),
        frontend=fe,
    )
    app.stats.false_wakes = 3
    report = health(app, started=time.monotonic() - 1800.0, transcripts=False)
    assert report["aec"] == "speex"
    assert report["false_wakes_per_hour"] == 6.0
    assert report["self_interruptions"] == 2
    assert report["self_interruptions_per_hour"] == 4.0
    assert report["local_barge_ins"] == 3
    assert report["aec_erle_db"] == round(fe.erle_db, 1)
    assert report["playback_min"] == round(fe.health.playback_s / 60, 1)
    assert report["aec_divergences"] == fe.divergences
    assert report["aec_delay_ms"] == round(fe.measured_delay_ms or -1) > 0
    fe.close()

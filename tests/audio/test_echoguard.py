"""The front end's barge-in decision on hard rooms: divergence is detected, not assumed away.

Each test plays a seeded room of ``appliance_dev.roomset`` through the app's own
``FrontEnd`` on stream time (``appliance_dev.bench.audio.play``) and looks at what the app acts
on: ``speech_started``. The user speaks only at the very end (11.5 s), so any earlier start
is the device interrupting itself.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.audio.echoguard import EchoGuard
from appliance_dev import roomset
from appliance_dev.bench.audio import StreamClock, front_end, play

FRAME = 320
USER_AT_S = 11.5


def _own_starts(
    scene: roomset.HardScene, guard: bool, tell_volume: bool = True
) -> tuple[list[int], int]:
    """Frames (relative to the echo-path change) where speech started before the user
    spoke, and how many divergences the guard saw."""
    clock = StreamClock()
    fe = front_end("speex", guard, clock)
    _, started, _, _ = asyncio.run(play(fe, scene, clock))
    fe.close()
    assert scene.scene.path_change is not None
    change = scene.scene.path_change // FRAME
    return [f - change for f in started if f * FRAME < USER_AT_S * 16_000], fe.divergences


@pytest.mark.parametrize("seed", [0, 2])
def test_a_moved_device_does_not_take_its_own_echo_for_the_user(seed: int) -> None:
    """Issue 18: after an echo-path change the canceller diverges; today's decision calls
    the echo a barge-in within a few frames, the guarded one marks the canceller diverged."""
    scene = roomset.make_hard_scene(seed, "path change", near_at_s=USER_AT_S)
    assert scene.volume_step_db == 0.0  # a move, not a volume step
    today, _ = _own_starts(scene, guard=False)
    assert any(0 <= f <= 10 for f in today)  # the room is hard enough to show the bug
    guarded, divergences = _own_starts(scene, guard=True)
    assert [f for f in guarded if f >= 0] == []  # nothing from the change to the user
    assert divergences >= 1


def test_a_volume_step_the_device_makes_is_told_not_discovered() -> None:
    scene = roomset.make_hard_scene(5, "path change", near_at_s=USER_AT_S)
    assert scene.volume_step_db == 6.0
    clock = StreamClock()
    fe = front_end("speex", True, clock)
    assert fe.echo_guard is not None
    change = scene.scene.path_change
    assert change is not None

    seen: list[tuple[int, bool]] = []
    original = fe.volume_changed

    def told(step_db: float) -> None:
        original(step_db)
        assert fe.echo_guard is not None
        seen.append((fe.divergences, fe.echo_guard.diverged(fe.stream_s)))

    fe.volume_changed = told  # type: ignore[method-assign]
    _, started, _, _ = asyncio.run(play(fe, scene, clock))
    fe.close()
    assert len(seen) == 1
    assert seen[0][1]  # diverged from the very frame of the step
    assert not [f for f in started if change <= f * FRAME < USER_AT_S * 16_000]


def test_volume_step_scales_the_learned_echo_model() -> None:
    guard = EchoGuard()
    rng = np.random.default_rng(0)
    for i in range(60):
        ref = (rng.standard_normal(FRAME) * 3000).astype(np.int16)
        mic = (ref * 0.5).astype(np.int16)
        guard.update(mic, (mic * 0.01).astype(np.int16), ref, i * 0.02, user=False)
    assert guard.echo_gain is not None
    before = guard.echo_gain.copy()
    guard.volume_step(6.0, 2.0)
    assert np.allclose(guard.echo_gain - before, 0.6)
    assert guard.diverged(2.5)
    assert not guard.diverged(3.5)
    assert guard.divergences == 1


def test_a_user_under_the_echo_is_not_taken_for_a_diverged_canceller() -> None:
    """The bench's own room 12 (the user 6 dB under the echo): at the user's onset the
    canceller's median band removal falls below 6 dB, which used to mark the canceller
    diverged for a second and left the user unheard; the removal stays high in most bands,
    so the guard now hears them while they speak."""
    scene = roomset.make_hard_scene(12, "bench")
    clock = StreamClock()
    fe = front_end("speex", True, clock)
    _, started, _, _ = asyncio.run(play(fe, scene, clock))
    fe.close()
    onset, talk = scene.scene.near_onset, scene.scene.double_talk
    assert onset is not None
    assert talk is not None
    assert [f for f in started if (f + 1) * FRAME < onset] == []
    assert [f for f in started if onset <= (f + 1) * FRAME and f * FRAME < talk[1]]
    assert fe.divergences == 0


@pytest.mark.parametrize("seed", [2, 14])
def test_a_user_10_db_under_a_clipping_speaker_is_heard_within_200_ms(seed: int) -> None:
    """Issue 18, hard rooms: the speaker saturates and is 10 dB louder than the user.
    These two rooms used to hear the user only after 1.2 s and 0.9 s (a linear speaker
    model, and the residual model's loud end hid the user's voice)."""
    scene = roomset.make_hard_scene(seed, "hard")
    clock = StreamClock()
    fe = front_end("speex", True, clock)
    _, started, _, _ = asyncio.run(play(fe, scene, clock))
    fe.close()
    onset = scene.scene.near_onset
    assert onset is not None
    assert [f for f in started if (f + 1) * FRAME < onset] == []
    heard = [(f + 1) * FRAME - onset for f in started]
    assert heard
    assert heard[0] <= 0.2 * 16_000


def test_echo_the_canceller_made_louder_marks_it_diverged() -> None:
    """Output 5.6 dB louder than the mic: not clearly above what the canceller has been
    leaving (no out excess), but a canceller adding echo has diverged."""
    guard = EchoGuard()
    rng = np.random.default_rng(1)
    for i in range(60):  # a canceller that removes nothing; pauses between words
        ref = (rng.standard_normal(FRAME) * (3000 if i % 4 else 30)).astype(np.int16)
        mic = (ref * 0.5).astype(np.int16)
        guard.update(mic, mic, ref, i * 0.02, user=False)
    assert guard.divergences == 0
    ref = (rng.standard_normal(FRAME) * 3000).astype(np.int16)
    mic = (ref * 0.5).astype(np.int16)
    assert not guard.update(mic, (mic * 1.9).astype(np.int16), ref, 1.2, user=False)
    assert guard.out_share < 0.5
    assert guard.diverged(1.3)
    assert guard.divergences == 1

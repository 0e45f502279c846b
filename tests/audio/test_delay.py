"""Echo delay: measured by cross-correlation, applied to the reference, kept through drops."""

from __future__ import annotations

import numpy as np

from appliance.audio.aec import ReferenceBuffer
from appliance.audio.delay import DelayEstimator, gcc_phat
from appliance.audio.frontend import DSP_FORMAT, FrontEnd
from appliance.config import Config
from appliance_dev import room

RATE = 16_000
FRAME = RATE // 50


def _room(delay_ms: float, seed: int = 3) -> room.Scene:
    cfg = room.RoomConfig(delay_ms=delay_ms, rt60_s=0.4, snr_db=40.0)
    return room.make_scene(seed, duration_s=8.0, near_at_s=None, config=cfg, randomize=False)


def test_gcc_phat_finds_the_bulk_delay_of_a_reverberant_room() -> None:
    scene = _room(87.0)
    mic, ref = scene.mic[: 2 * RATE].astype(float), scene.ref[: 2 * RATE].astype(float)
    lag, ratio = gcc_phat(mic, ref, RATE // 4)
    assert abs(lag - round(0.087 * RATE)) <= 16  # the direct path, within 1 ms
    assert ratio > 8.0


def test_estimator_agrees_on_the_delay_only_after_two_estimates() -> None:
    scene = _room(112.0)
    estimator = DelayEstimator(RATE)
    agreed: list[tuple[int, int]] = []
    for i in range(len(scene.mic) // FRAME):
        got = estimator.push(
            scene.mic[i * FRAME : (i + 1) * FRAME], scene.ref[i * FRAME : (i + 1) * FRAME]
        )
        if got is not None:
            agreed.append((i, got))
    assert len(agreed) == 1  # once agreed, an unchanged delay is not announced again
    frame, lag = agreed[0]
    assert abs(lag - round(0.112 * RATE)) <= 16
    assert frame * FRAME >= 3 * RATE  # a 2 s window, then two estimates a second apart


def test_silence_gives_no_estimate() -> None:
    estimator = DelayEstimator(RATE)
    quiet = np.zeros(FRAME, dtype=np.int16)
    assert all(estimator.push(quiet, quiet) is None for _ in range(300))
    assert estimator.estimates == 0


def test_set_delay_moves_the_reference_later_or_earlier() -> None:
    ref = ReferenceBuffer(RATE)
    ramp = np.arange(1, 801, dtype="<i2")
    ref.played(ramp.tobytes())
    first = np.frombuffer(ref.take(100), dtype="<i2")
    ref.set_delay(50)  # 50 samples later: silence, then where it left off
    later = np.frombuffer(ref.take(100), dtype="<i2")
    assert first.tolist() == list(range(1, 101))
    assert later[:50].tolist() == [0] * 50
    assert later[50:].tolist() == list(range(101, 151))
    ref.set_delay(10)  # 40 samples earlier: skipped
    assert np.frombuffer(ref.take(10), dtype="<i2").tolist() == list(range(191, 201))


def test_dropped_capture_frames_skip_their_reference() -> None:
    """An overflow loses mic frames; the reference they would have met is dropped too, so
    the next mic frame is cleaned against its own echo, not against older audio."""
    fe = FrontEnd(Config(), DSP_FORMAT)
    played = np.arange(10 * FRAME, dtype="<i2")
    fe.reference.played(played.tobytes())
    fe.process(bytes(DSP_FORMAT.frame_bytes))
    assert np.frombuffer(fe.echo.last_ref, dtype="<i2")[0] == 0
    fe.capture_dropped(2)  # two frames lost
    fe.capture_dropped(2)  # the same count again: nothing more to skip
    fe.process(bytes(DSP_FORMAT.frame_bytes))
    assert np.frombuffer(fe.echo.last_ref, dtype="<i2")[0] == 3 * FRAME
    fe.close()

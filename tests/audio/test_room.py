"""Synthetic rooms and the echo metrics the audio bench reports."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio.aec import HalfDuplex, Passthrough
from appliance_dev import room

RATE = 16_000


def test_scenes_are_reproducible_and_laid_out_as_asked() -> None:
    a = room.make_scene(7, duration_s=6.0, converge_s=2.0, near_at_s=4.0)
    b = room.make_scene(7, duration_s=6.0, converge_s=2.0, near_at_s=4.0)
    c = room.make_scene(8, duration_s=6.0, converge_s=2.0, near_at_s=4.0)
    assert np.array_equal(a.mic, b.mic)
    assert np.array_equal(a.ref, b.ref)
    assert not np.array_equal(a.mic, c.mic)
    assert a.mic.dtype == np.int16
    assert len(a.mic) == len(a.ref) == len(a.near) == 6 * RATE
    assert 30.0 <= a.config.delay_ms <= 80.0
    assert 0.2 <= a.config.rt60_s <= 0.4
    # The user is silent until they speak; the far-end-only span ends where they start.
    assert a.near_onset is not None
    assert a.double_talk is not None
    assert 4 * RATE <= a.near_onset < 5 * RATE
    assert not np.any(a.near[: 4 * RATE])
    assert a.far_only == (2 * RATE, a.near_onset)
    assert a.double_talk[0] == a.near_onset
    assert a.double_talk[1] <= len(a.mic)


def test_echo_lags_the_reference_by_the_room_delay() -> None:
    cfg = room.RoomConfig(delay_ms=50.0, snr_db=60.0)
    scene = room.make_scene(1, duration_s=4.0, near_at_s=None, config=cfg, randomize=False)
    mic = scene.mic.astype(float)
    ref = scene.ref.astype(float)
    lags = range(0, 1600, 8)
    best = max(lags, key=lambda lag: float(np.dot(mic[lag:], ref[: len(ref) - lag])))
    assert abs(best - 800) <= 24  # 50 ms at 16 kHz (early reflections smear it a little)
    assert scene.near_onset is None
    assert scene.double_talk is None
    assert not np.any(scene.near)


def test_path_change_changes_the_echo_mid_clip() -> None:
    still = room.make_scene(2, duration_s=5.0, near_at_s=None)
    moved = room.make_scene(2, duration_s=5.0, near_at_s=None, path_change_at_s=3.0)
    assert moved.path_change == 3 * RATE
    assert moved.far_only[1] == 3 * RATE
    before = slice(RATE, 3 * RATE)
    after = slice(3 * RATE + RATE // 2, None)
    # Same far end, different echo after the change.
    assert np.array_equal(still.ref, moved.ref)
    diff_before = np.abs(still.mic[before].astype(float) - moved.mic[before].astype(float))
    diff_after = np.abs(still.mic[after].astype(float) - moved.mic[after].astype(float))
    assert float(np.mean(diff_after)) > 10 * float(np.mean(diff_before)) + 1.0


def test_impulse_response_has_the_delay_and_decay_asked_for() -> None:
    rng = np.random.default_rng(0)
    h = room.impulse_response(RATE, 40.0, 0.3, 6.0, rng)
    assert float(np.sum(h**2)) == pytest.approx(1.0)
    assert not np.any(h[:640])
    assert h[640] != 0
    # Schroeder backward integration: the −5 → −25 dB stretch takes a third of RT60.
    tail = h[640 + 64 :] ** 2
    edc = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / np.sum(tail))
    t5 = int(np.argmax(edc <= -5.0))
    t25 = int(np.argmax(edc <= -25.0))
    rt60 = 3.0 * (t25 - t5) / RATE
    assert rt60 == pytest.approx(0.3, rel=0.2)


def test_loudspeaker_is_a_mild_soft_clip() -> None:
    x = np.linspace(-32768.0, 32767.0, 1001)
    y = room.loudspeaker(x, 1.0)
    assert np.all(np.diff(y) > 0)  # monotonic
    assert abs(y[-1]) < abs(x[-1])  # peaks compressed
    quiet = room.loudspeaker(np.array([100.0, -100.0]), 1.0)
    assert quiet == pytest.approx([100.0, -100.0], rel=1e-4)  # linear when quiet
    assert np.array_equal(room.loudspeaker(x, 0.0), x)


def test_fft_convolve_matches_direct_convolution() -> None:
    rng = np.random.default_rng(1)
    x, h = rng.standard_normal(1000), rng.standard_normal(37)
    assert room.fft_convolve(x, h) == pytest.approx(np.convolve(x, h)[:1000], abs=1e-9)


def test_erle() -> None:
    mic = (np.random.default_rng(2).standard_normal(1600) * 3000).astype(np.int16)
    assert room.erle_db(mic, mic, (0, 1600)) == pytest.approx(0.0)
    assert room.erle_db(mic, (mic / 10).astype(np.int16), (0, 1600)) == pytest.approx(20.0, abs=0.2)
    assert room.erle_db(mic, np.zeros_like(mic), (0, 1600)) == room.MAX_DB


def test_si_sdr_and_near_gain() -> None:
    rng = np.random.default_rng(3)
    target = rng.standard_normal(8000) * 1000
    noise = rng.standard_normal(8000) * 100  # 20 dB below
    span = (0, 8000)
    assert room.si_sdr_db(target + noise, target, span) == pytest.approx(20.0, abs=0.5)
    assert room.si_sdr_db(0.5 * target, target, span) == room.MAX_DB  # scale-invariant
    assert room.near_gain_db(0.5 * target, target, span) == pytest.approx(-6.02, abs=0.01)
    assert room.near_gain_db(target + noise, target, span) == pytest.approx(0.0, abs=0.1)
    silent = np.zeros(8000)
    assert room.si_sdr_db(silent, target, span) == -room.MAX_DB
    assert room.near_gain_db(silent, target, span) == -room.MAX_DB
    # An engine that delays its output by 10 samples is scored at that lag.
    late = np.concatenate([np.zeros(10), target])[:8000]
    assert room.si_sdr_db(late, target, (0, 7000), lag=10) == room.MAX_DB
    assert room.si_sdr_db(late, target, (0, 7000)) < 0.0


def test_engine_latency_and_scoring_of_the_simple_engines() -> None:
    assert room.engine_latency(Passthrough(RATE), RATE) == 0
    scene = room.make_scene(4, duration_s=7.0, converge_s=2.0, near_at_s=5.0)
    assert scene.double_talk is not None
    out, _ = room.run_engine(Passthrough(RATE), scene)
    assert np.array_equal(out, scene.mic)
    assert room.erle_db(scene.mic, out, scene.far_only) == pytest.approx(0.0)
    assert room.near_gain_db(out, scene.near, scene.double_talk) == pytest.approx(0.0, abs=1.0)
    # Half-duplex mutes the far-end-only stretch (huge ERLE) and the user with it.
    muted, _ = room.run_engine(HalfDuplex(RATE), scene)
    assert room.erle_db(scene.mic, muted, scene.far_only) > 40.0
    assert room.near_gain_db(muted, scene.near, scene.double_talk) < -6.0
    starts, values = room.erle_track(scene.mic, muted, scene.ref, RATE, window_ms=100)
    assert len(starts) == len(values) > 0
    assert np.all(starts % 1600 == 0)

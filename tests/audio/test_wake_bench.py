"""Helpers of the wake-word bench (devtools/appliance_dev/bench/wake.py) on tiny inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance_dev.bench import wake as bench
from tests.conftest import require_tool


def test_detections_replay_the_detector() -> None:
    scores = np.array([0.0, 0.9, 0.95, 0.8, 0.2, 0.9, 0.1, 0.0, 0.0, 0.9])
    assert bench.detections(scores, 0.85, refractory=0) == [1, 5, 9]  # rising edges only
    assert bench.detections(scores, 0.85, refractory=5) == [1, 9]  # 5 is too soon after 1
    assert bench.detections(scores, 0.95, refractory=0) == []  # strictly above
    assert bench.detections(np.array([0.9, 0.9]), 0.5, refractory=0) == [0]


def test_add_noise_sets_the_snr_and_loops_the_bank() -> None:
    clean = np.zeros(1000)
    bank = np.array([1.0, -1.0, 1.0, -1.0])  # unit RMS
    noisy = bench.add_noise(clean, bank, snr_db=20.0, level=100.0, at=1)
    assert np.sqrt(np.mean(noisy**2)) == pytest.approx(10.0)
    assert noisy[:3].tolist() == pytest.approx([-10.0, 10.0, -10.0])  # starts at sample 1


def test_sox_effects_and_labels() -> None:
    plain = bench.Speaker("flite", "slt")
    shifted = bench.Speaker("flite", "slt", 0.85, -300)
    assert bench.sox_effects(plain) == ["channels", "1", "rate", "16000"]
    assert bench.sox_effects(shifted)[4:] == ["tempo", "-s", "0.85", "pitch", "-300"]
    assert (plain.label, shifted.label) == ("flite:slt", "flite:slt ×0.85 -300c")


def test_synthesis_is_cached_and_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("sox")
    require_tool("flite")
    monkeypatch.setattr(bench, "CACHE", tmp_path)
    speaker = bench.Speaker("flite", "kal16", 1.2, 300)
    first = bench.synthesize(speaker, "hello there")
    (cached,) = tmp_path.glob("*.wav")  # the raw TTS output is not kept
    plain = bench.synthesize(bench.Speaker("flite", "kal16"), "hello there")
    assert 0.7 < first.size / plain.size < 0.9  # tempo 1.2 shortens it
    before = cached.stat().st_mtime_ns
    again = bench.synthesize(speaker, "hello there")
    assert np.array_equal(first, again)
    assert cached.stat().st_mtime_ns == before  # read from the cache, not made again

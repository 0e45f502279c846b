"""The real ALSA path, opened through PyAudio exactly as on a Pi, without a sound card:
alsa-lib's ``file`` plugin plays a raw file as the mic and records the speaker to a file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
ASOUNDRC = """
pcm.appliance_mic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{folder}/in.raw"
    format "raw"
    hint {{ show on description "raw file as a microphone" }}
}}
pcm.appliance_speaker {{
    type file
    slave.pcm "null"
    file "{folder}/out.raw"
    format "raw"
    hint {{ show on description "raw file as a speaker" }}
}}
"""


INPUT_S = 1200
"""Seconds of capture input (50 frames of 20 ms each)."""


@pytest.fixture
def alsa_home(tmp_path: Path) -> Path:
    require(importlib.util.find_spec("pyaudio") is not None, "PyAudio (the [pi] extra)")
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(folder=tmp_path))
    rng = np.random.default_rng(7)
    # the file plugin reads as fast as it can: 20 minutes of input, so that a consumer that
    # starts late (a fresh checkout compiling its modules, a busy machine) still meets frames
    # before the end of the file, where the plugin repeats its last chunk
    rng.integers(-20_000, 20_000, 16_000 * INPUT_S, dtype=np.int16).astype("<i2").tofile(
        tmp_path / "in.raw"
    )
    return tmp_path


def run(mode: str, home: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.audio.alsa_scenario", mode, str(home)],
        cwd=ROOT,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow  # PyAudio and ALSA in a subprocess
def test_capture_through_pyaudio_and_alsa_is_exact_and_counts_every_lost_frame(
    alsa_home: Path,
) -> None:
    result = run("capture", alsa_home)
    assert {"appliance_mic", "appliance_speaker"} <= set(result["devices"])
    # at the end of its file the plugin repeats the last chunk: look at what came before
    offsets = [o for o in result["offsets"] if o < INPUT_S * 50 - 10]
    assert len(offsets) >= 10, result["offsets"]
    assert all(o >= 0 for o in offsets), "every frame read is an exact slice of the input"
    assert offsets == sorted(set(offsets)), "in order, never repeated"
    skipped = offsets[-1] + 1 - len(offsets)
    assert skipped > 0, "the plugin outruns a slow reader"
    assert result["overruns"] >= skipped, "no frame is dropped without being counted"
    assert "no capture device matches 'no_such_mic'" in result["missing"]


@pytest.mark.slow  # PyAudio and ALSA in a subprocess
def test_playback_through_pyaudio_and_alsa_plays_every_frame_in_order(
    alsa_home: Path,
) -> None:
    result = run("playback", alsa_home)
    assert result["played_marks"] == list(range(25))
    assert result["underruns"] >= 1, "a starved speaker is counted"

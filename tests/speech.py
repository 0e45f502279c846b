"""Speech fixtures made with espeak-ng at test time (deterministic output)."""

from __future__ import annotations

import subprocess
from functools import lru_cache

import numpy as np

from appliance.audio.frames import Pcm, resample
from standin.voice import read_wav
from tests.conftest import require_tool


@lru_cache(maxsize=32)
def _speak(text: str, rate: int, voice: str) -> bytes:
    exe = require_tool("espeak-ng")
    wav = subprocess.run(
        [exe, "-v", voice, "--stdout", text], check=True, capture_output=True
    ).stdout
    samples, source_rate = read_wav(wav)
    return resample(samples, source_rate, rate).tobytes()


def speech(text: str, rate: int = 48_000, voice: str = "en-us", pad_s: float = 0.0) -> Pcm:
    """``text`` spoken by espeak-ng as mono s16 at ``rate``, with ``pad_s`` silence after."""
    samples = np.frombuffer(_speak(text, rate, voice), dtype=np.int16)
    return np.concatenate([samples, np.zeros(int(rate * pad_s), dtype=np.int16)])

"""The stand-in's voice: espeak-ng when installed, else small WAV assets shipped here.

Speech is returned as 48 kHz mono s16 samples, ready for the outbound RTP track.
espeak-ng output is deterministic, so tests can correlate what the device heard with what
the stand-in said. Without espeak-ng the stand-in plays the closest pre-rendered phrase.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from appliance_common.pcm import Pcm, resample

log = logging.getLogger(__name__)

RATE = 48_000
ASSETS = Path(__file__).with_name("assets")

VOICES = {  # GA voice name -> espeak-ng voice variant, so voices sound different
    "alloy": "en-us+m3",
    "ash": "en-us+m1",
    "ballad": "en-gb+m2",
    "coral": "en-us+f2",
    "echo": "en-us+m4",
    "sage": "en-us+f3",
    "shimmer": "en-us+f4",
    "verse": "en-gb+m3",
    "marin": "en-us+f1",
    "cedar": "en-us+m2",
}


def read_wav(data: bytes) -> tuple[Pcm, int]:
    """Decode a 16-bit PCM WAV to mono samples and its rate."""
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getsampwidth() != 2:
            raise ValueError("only 16-bit WAV is supported")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples.astype(np.int16, copy=False), rate


def asset_name(text: str) -> str:
    """File stem for a phrase: lowercase words joined by dashes."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:80] or "silence"


class Voice:
    """Text to 48 kHz speech. ``mode``: ``auto`` (espeak-ng if present), ``espeak``, ``assets``."""

    def __init__(self, mode: str = "auto") -> None:
        self._espeak = shutil.which("espeak-ng") if mode in ("auto", "espeak") else None
        if mode == "espeak" and self._espeak is None:
            raise RuntimeError("tts=espeak but espeak-ng is not installed")
        self.engine = "espeak-ng" if self._espeak else "assets"

    def speak(self, text: str, voice: str = "alloy", speed: float = 1.0) -> Pcm:
        if self._espeak:
            return _espeak(self._espeak, text, VOICES.get(voice, "en-us"), speed)
        return _asset(text)


@lru_cache(maxsize=64)
def _espeak(exe: str, text: str, voice: str, speed: float) -> Pcm:
    words_per_minute = str(int(175 * speed))
    wav = subprocess.run(
        [exe, "-v", voice, "-s", words_per_minute, "--stdout", text],
        check=True,
        capture_output=True,
        timeout=20,
    ).stdout
    samples, rate = read_wav(wav)
    return resample(samples, rate, RATE)


@lru_cache(maxsize=64)
def _asset(text: str) -> Pcm:
    wanted = set(asset_name(text).split("-"))
    best: tuple[int, Path] | None = None
    for path in sorted(ASSETS.glob("*.wav")):
        score = len(wanted & set(path.stem.split("-")))
        if best is None or score > best[0]:
            best = (score, path)
    if best is None:
        log.warning("no speech assets shipped; replying with silence")
        return np.zeros(RATE // 2, dtype=np.int16)
    samples, rate = read_wav(best[1].read_bytes())
    return resample(samples, rate, RATE)

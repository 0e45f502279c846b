"""Earcons: short cues synthesised with numpy at the sink's rate (no files to ship)."""

from __future__ import annotations

import numpy as np

from appliance.audio.base import AudioFormat
from appliance.audio.frames import Pcm, Rechunker

# name -> (frequencies in Hz, each tone's length in s)
CUES: dict[str, tuple[tuple[float, ...], float]] = {
    "wake": ((660.0, 880.0), 0.07),
    "end": ((880.0, 660.0), 0.07),
    "error": ((330.0, 220.0), 0.15),
    "offline": ((440.0, 440.0, 440.0), 0.08),
}


def tone(freq: float, seconds: float, rate: int, level: float = 0.25) -> Pcm:
    t = np.arange(int(rate * seconds)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    return (np.sin(2 * np.pi * freq * t) * fade * level * 32767).astype(np.int16)


def cue_frames(name: str, fmt: AudioFormat) -> list[bytes]:
    """The cue as fixed frames of ``fmt`` (padded with silence to a whole frame)."""
    freqs, seconds = CUES[name]
    gap = np.zeros(int(fmt.rate * 0.02), dtype=np.int16)
    pcm = np.concatenate([np.concatenate([tone(f, seconds, fmt.rate), gap]) for f in freqs])
    pad = np.zeros(fmt.frame_samples, dtype=np.int16)
    return Rechunker(fmt).push(np.concatenate([pcm, pad]))

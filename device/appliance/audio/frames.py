"""Re-chunking and levels, only at the edges (resampling lives in ``appliance_common.pcm``).

``Rechunker`` turns runs of samples into fixed frames.
"""

from __future__ import annotations

import numpy as np

from appliance.audio.base import SAMPLE_WIDTH, AudioFormat
from appliance_common.pcm import Pcm, Resampler, resample

__all__ = ["Pcm", "Rechunker", "Resampler", "resample", "rms_dbfs"]


class Rechunker:
    """Collects samples and hands out fixed frames of ``fmt`` (as bytes)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._buffer = bytearray()

    def push(self, samples: Pcm | bytes) -> list[bytes]:
        data = samples if isinstance(samples, bytes) else samples.astype("<i2").tobytes()
        self._buffer += data
        size = self.format.frame_bytes
        count = len(self._buffer) // size
        frames = [bytes(self._buffer[i * size : (i + 1) * size]) for i in range(count)]
        del self._buffer[: count * size]
        return frames

    def pending_samples(self) -> int:
        return len(self._buffer) // SAMPLE_WIDTH

    def clear(self) -> None:
        self._buffer.clear()


def rms_dbfs(frame: bytes | Pcm) -> float:
    """Level of a frame in dBFS (−120 for digital silence)."""
    samples = np.frombuffer(frame, dtype="<i2") if isinstance(frame, bytes) else frame
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return -120.0 if rms < 1e-9 else 20.0 * float(np.log10(rms / 32768.0))

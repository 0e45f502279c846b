"""Re-chunking and resampling, only at the edges.

``Resampler`` wraps libswresample (through PyAV): it converts s16 audio of any rate and
channel layout to s16 mono at a target rate, keeping filter state across calls so a stream
resamples without clicks. ``Rechunker`` turns runs of samples into fixed frames.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from appliance.audio.base import SAMPLE_WIDTH, AudioFormat

Pcm = npt.NDArray[np.int16]


class Resampler:
    """Stateful s16 resampler/downmixer to mono at ``out_rate``."""

    def __init__(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)

    def frame(self, frame: av.AudioFrame) -> Pcm:
        """Resample one decoded frame (any rate/layout) to mono ``out_rate`` samples."""
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(out).astype(np.int16, copy=False)

    def pcm(self, samples: Pcm, rate: int, channels: int = 1) -> Pcm:
        """Resample interleaved s16 ``samples`` recorded at ``rate``."""
        if rate == self.out_rate and channels == 1:
            return samples
        layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples).reshape(1, -1), format="s16", layout=layout
        )
        frame.sample_rate = rate
        return self.frame(frame)


def resample(samples: Pcm, rate: int, out_rate: int, channels: int = 1) -> Pcm:
    """One-shot resampling of a whole clip (flushes the filter at the end)."""
    if rate == out_rate and channels == 1:
        return samples
    resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
    layout = "mono" if channels == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples).reshape(1, -1), format="s16", layout=layout
    )
    frame.sample_rate = rate
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(chunks).astype(np.int16, copy=False)


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

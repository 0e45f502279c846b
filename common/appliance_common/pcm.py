"""PCM helpers shared by the device, the stand-in and the dev tools.

``Resampler`` wraps libswresample (through PyAV): it converts s16 audio of any rate and
channel layout to s16 mono at a target rate, keeping filter state across calls so a stream
resamples without clicks.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

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

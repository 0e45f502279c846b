"""Echo delay, measured: how far the echo in the mic lags the reference handed to the canceller.

``aec_delay_ms = 0`` means "measure it". ``DelayEstimator`` keeps the last ``window_s`` of
mic and reference (as the canceller received them, 16 kHz) and, every ``every_s`` of
playback, cross-correlates them with phase transform weighting (GCC-PHAT: a sharp peak at
the bulk delay whatever the speech's spectrum). An estimate counts once two in a row agree
within ``agree_ms`` and the peak stands ``min_peak_ratio`` above the correlation's typical
level; the front end then moves that much of the bulk delay out of the adaptive filter's
tail (``ReferenceBuffer.set_delay``), so a 200 ms filter spends its length on the room's
reverberation rather than on waiting.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]
SETTLED_SLOWDOWN = 5
"""Once a delay is agreed, check it this many times less often (it rarely changes)."""


def gcc_phat(
    mic: npt.NDArray[np.float64], ref: npt.NDArray[np.float64], max_lag: int
) -> tuple[int, float]:
    """(lag, peak ratio): the lag in samples (0…``max_lag``) by which ``mic`` follows ``ref``,
    and how far the peak stands above the median absolute correlation."""
    n = len(mic) + len(ref)
    size = 1 << (n - 1).bit_length()
    cross = np.fft.rfft(mic, size) * np.conj(np.fft.rfft(ref, size))
    cross /= np.maximum(np.abs(cross), 1e-9)
    corr = np.fft.irfft(cross, size)[: max_lag + 1]
    magnitude = np.abs(corr)
    lag = int(np.argmax(magnitude))
    typical = float(np.median(magnitude)) or 1e-12
    return lag, float(magnitude[lag] / typical)


class DelayEstimator:
    def __init__(
        self,
        rate: int = 16_000,
        *,
        window_s: float = 2.0,
        every_s: float = 1.0,
        max_ms: int = 250,
        agree_ms: int = 4,
        min_peak_ratio: float = 8.0,
        min_ref_dbfs: float = -45.0,
    ) -> None:
        self.rate = rate
        self.max_lag = rate * max_ms // 1000
        self.agree = rate * agree_ms // 1000
        self.min_peak_ratio = min_peak_ratio
        self._size = round(window_s * rate)
        self._every = round(every_s * rate)
        self._mic: deque[Samples] = deque()
        self._ref: deque[Samples] = deque()
        self._held = 0
        self._since = 0
        self._min_power = (10.0 ** (min_ref_dbfs / 20.0) * 32768.0) ** 2
        self._last: int | None = None
        self.estimate: int | None = None
        """The agreed delay in samples (None until two estimates agree)."""
        self.estimates = 0

    def reset(self) -> None:
        """Forget the audio held (the reference's alignment changed)."""
        self._mic.clear()
        self._ref.clear()
        self._held = self._since = 0
        self._last = None

    def push(self, mic: Samples, ref: Samples) -> int | None:
        """Add one frame; returns a newly agreed delay (samples) or ``None``."""
        self._mic.append(mic)
        self._ref.append(ref)
        self._held += len(mic)
        while self._held - len(self._mic[0]) >= self._size:
            self._held -= len(self._mic.popleft())
            self._ref.popleft()
        if float(np.mean(ref.astype(np.float64) ** 2)) >= self._min_power:
            self._since += len(mic)
        every = self._every * (SETTLED_SLOWDOWN if self.estimate is not None else 1)
        if self._since < every or self._held < self._size:
            return None
        self._since = 0
        m = np.concatenate(self._mic).astype(np.float64)
        r = np.concatenate(self._ref).astype(np.float64)
        lag, ratio = gcc_phat(m, r, self.max_lag)
        self.estimates += 1
        if ratio < self.min_peak_ratio:
            self._last = None
            return None
        agreed = self._last is not None and abs(lag - self._last) <= self.agree
        self._last = lag
        if not agreed or (self.estimate is not None and abs(lag - self.estimate) <= self.agree):
            return None
        self.estimate = lag
        return lag

"""Audio tracks of a stand-in call: the model's voice out, the user's voice in."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import MediaStreamTrack

from appliance.audio.frames import Pcm

RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz


class ReplyTrack:
    """Outbound audio: whatever is queued, else silence, paced by real time.

    ``make_track`` wraps it in an aiortc track.
    ``played_samples`` counts model audio actually sent on the wire.
    """

    def __init__(self) -> None:
        self._queue: Pcm = np.zeros(0, dtype=np.int16)
        self._pts = 0
        self._start: float | None = None
        self.played_samples = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.sent: list[Pcm] = []
        """Every non-silent chunk sent, for tests that correlate what the device heard."""

    def enqueue(self, samples: Pcm) -> None:
        self._queue = np.concatenate([self._queue, samples])
        if self._queue.size:
            self.drained.clear()

    def pending(self) -> int:
        return int(self._queue.size)

    def clear(self) -> int:
        dropped = int(self._queue.size)
        self._queue = np.zeros(0, dtype=np.int16)
        self.drained.set()
        return dropped

    async def next_frame(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5:  # fell far behind (loop stall): resynchronise instead of bursting
            self._start = time.monotonic() - self._pts / RATE
        if self._queue.size:
            chunk = self._queue[:FRAME]
            self._queue = self._queue[FRAME:]
            self.played_samples += chunk.size
            self.sent.append(chunk)
            if chunk.size < FRAME:
                chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, dtype=np.int16)])
            if not self._queue.size:
                self.drained.set()
        else:
            chunk = np.zeros(FRAME, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class _Track(MediaStreamTrack):
    kind = "audio"

    def __init__(self, source: ReplyTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> av.AudioFrame:
        return await self._source.next_frame()


def make_track(source: ReplyTrack) -> MediaStreamTrack:
    """Wrap ``source`` in an aiortc ``MediaStreamTrack``."""
    return _Track(source)

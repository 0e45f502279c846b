"""The two audio legs of a call: mic → RTP (``MicTrack``), remote RTP → sink (``Playout``)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from appliance.audio.base import AudioFormat, AudioSink
from appliance.audio.frames import Rechunker, Resampler

log = logging.getLogger(__name__)


class MicTrack(MediaStreamTrack):
    """An aiortc audio track fed with fixed mic frames by the app.

    The mic sets the pace: ``recv`` returns when the next frame has been pushed. While the
    uplink is closed the frame's samples are replaced by silence, so RTP keeps flowing but
    no audio leaves the device.
    """

    kind = "audio"

    def __init__(self, fmt: AudioFormat, max_queue: int = 50) -> None:
        super().__init__()
        self.format = fmt
        self.uplink_open = False
        self._queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(max_queue)
        self._pts = 0
        self._silence = bytes(fmt.frame_bytes)
        self.dropped = 0
        self.latencies: deque[float] = deque(maxlen=2000)
        """Seconds from ``push`` to the encoder taking the frame (device-added, uplink)."""

    def push(self, frame: bytes) -> None:
        """Hand one captured frame to the track (never blocks; drops the oldest when full)."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("uplink queue full: %d mic frames dropped so far", self.dropped)
        self._queue.put_nowait((frame, time.perf_counter()))

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        data, pushed = await self._queue.get()
        self.latencies.append(time.perf_counter() - pushed)
        samples = np.frombuffer(data if self.uplink_open else self._silence, dtype="<i2")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.format.rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.format.rate)
        self._pts += samples.size
        return frame


class Playout:
    """Reads the model's audio from the remote track and writes fixed frames to the sink."""

    def __init__(self, sink: AudioSink) -> None:
        self.sink = sink
        self._resampler = Resampler(sink.format.rate)
        self._chunker = Rechunker(sink.format)
        self._task: asyncio.Task[None] | None = None
        self.muted = False
        """True after an interruption: drop model audio until the next reply starts."""
        self.frames_written = 0
        self.reply_frames = 0
        """Frames written since the current reply started (for ``truncate``)."""
        self.latencies: deque[float] = deque(maxlen=2000)
        """Seconds from a decoded remote frame to its sink write (device-added, downlink)."""
        self.energy: deque[float] = deque(maxlen=50)

    def start(self, track: Any) -> None:
        self._task = asyncio.create_task(self._run(track), name="playout")

    @property
    def reply_ms(self) -> int:
        return self.reply_frames * self.sink.format.frame_ms

    def reply_started(self) -> None:
        self.muted = False
        self.reply_frames = 0

    def interrupt(self) -> None:
        """Drop queued audio now and ignore what is still in flight."""
        self.muted = True
        self._chunker.clear()
        self.sink.flush()

    async def _run(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            received = time.perf_counter()
            samples = self._resampler.frame(frame)
            if self.muted:
                continue
            for out in self._chunker.push(samples):
                await self.sink.write(out)
                self.frames_written += 1
                self.reply_frames += 1
            self.latencies.append(time.perf_counter() - received)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

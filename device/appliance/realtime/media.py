"""The two audio legs of a call: mic → RTP (``MicTrack``), remote RTP → sink (``Playout``).

Uplink: ``MicTrack`` encodes Opus itself (``opus.OpusPacketEncoder``: ``UPLINK_BITRATE``
speech bitrate, in-band FEC for ``UPLINK_EXPECTED_LOSS_PCT``) and hands aiortc finished
``av.Packet``s, which aiortc's sender sends as they are (its ``pack`` path; its own
96 kbit/s stereo encoder is then never used). Downlink: ``Playout`` asks ``jitter.attach``
to conceal lost packets of the remote track (Opus PLC/FEC) before reading it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from appliance.realtime import jitter
from appliance_common.opus import OpusPacketEncoder

log = logging.getLogger(__name__)

UPLINK_BITRATE = 32_000
"""Opus bitrate for the mic (bit/s): wideband speech; aiortc's default is 96 kbit/s stereo."""
UPLINK_EXPECTED_LOSS_PCT = 10
"""Loss the Opus encoder plans its in-band FEC for (0 turns FEC off)."""
OPUS_RATES = (48_000, 24_000, 16_000, 12_000, 8_000)
RTP_CLOCK = 48_000


class MicTrack(MediaStreamTrack):
    """An aiortc audio track fed with fixed mic frames by the app.

    The mic sets the pace: ``recv`` returns when the next Opus packet has been encoded from
    pushed frames. While the uplink is closed the frame's samples are replaced by silence,
    so RTP keeps flowing but no audio leaves the device.
    """

    kind = "audio"

    def __init__(
        self,
        fmt: AudioFormat,
        max_queue: int = 50,
        *,
        bitrate: int = UPLINK_BITRATE,
        expected_loss_pct: int = UPLINK_EXPECTED_LOSS_PCT,
    ) -> None:
        super().__init__()
        self.format = fmt
        self.bitrate = bitrate
        self.expected_loss_pct = expected_loss_pct
        self.uplink_open = False
        self._queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(max_queue)
        self._silence = bytes(fmt.frame_bytes)
        self._encoder = OpusPacketEncoder(bitrate, expected_loss_pct)
        self._resampler = None if fmt.rate in OPUS_RATES else Resampler(RTP_CLOCK)
        self._packets: deque[av.Packet[Any]] = deque()
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

    def _encode(self, data: bytes) -> list[av.Packet[Any]]:
        samples = np.frombuffer(data, dtype="<i2")
        rate = self.format.rate
        if self._resampler is not None:
            samples, rate = self._resampler.pcm(samples, rate), RTP_CLOCK
        return self._encoder.encode(samples, rate)

    async def recv(self) -> av.Packet[Any]:  # aiortc sends Packets as they are
        if self.readyState != "live":
            raise MediaStreamError
        while not self._packets:
            data, pushed = await self._queue.get()
            self.latencies.append(time.perf_counter() - pushed)
            payload = data if self.uplink_open else self._silence
            loop = asyncio.get_running_loop()  # encode off the loop, as aiortc itself does
            self._packets.extend(await loop.run_in_executor(None, self._encode, payload))
        return self._packets.popleft()


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
        self.concealment: jitter.ConcealingReceiver | None = None
        """Loss concealment on the remote track (``None``: aiortc's own jitter buffer)."""

    def start(self, track: Any) -> None:
        self.concealment = jitter.attach(track)
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
        if self.concealment is not None:
            self.concealment.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

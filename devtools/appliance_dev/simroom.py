"""A simulated room, in real time: one speaker, one mic, an echo path between them, a user.

``SimRoom.speaker`` is an ``AudioSink`` (48 kHz) and ``SimRoom.mic`` an ``AudioSource``
(16 kHz, paced by the clock like a sound card). What the speaker plays reaches the mic
through the echo path of ``appliance_dev.room`` (bulk delay, early reflections, an
exponentially decaying tail, a mildly clipping loudspeaker), mixed with whatever the user
says (``say``) and a little noise. The device cannot tell it from hardware, so the whole
capture path — echo suppression, speech gate, barge-in, full duplex — runs for real on it.
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np

from appliance.audio.base import AudioFormat
from appliance.audio.frames import Pcm, Resampler
from appliance_dev.room import impulse_response, loudspeaker

MIC = AudioFormat(rate=16_000, frame_ms=20)
SPEAKER = AudioFormat(rate=48_000, frame_ms=20)


class SimRoom:
    def __init__(
        self,
        *,
        delay_ms: float = 40.0,
        rt60_s: float = 0.25,
        drr_db: float = 6.0,
        echo_gain: float = 0.5,
        noise_dbfs: float = -75.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self._rng = rng
        self.ir = impulse_response(MIC.rate, delay_ms, rt60_s, drr_db, rng) * echo_gain
        self._history = np.zeros(self.ir.size - 1)
        self._air: deque[float] = deque()
        self._user: deque[float] = deque()
        self.noise_rms = 32768.0 * 10 ** (noise_dbfs / 20)
        self.speaker = RoomSpeaker(self)
        self.mic = RoomMic(self)
        self.played_frames = 0
        """Mic frames during which the speaker played something audible."""

    def say(self, speech: Pcm) -> None:
        """The user speaks (16 kHz mono); it reaches the mic from the next frame on."""
        self._user.extend(speech.astype(np.float64))

    @property
    def user_speaking(self) -> bool:
        return bool(self._user)

    def _next_mic_frame(self) -> bytes:
        n = MIC.frame_samples
        out = np.fromiter(
            (self._air.popleft() if self._air else 0.0 for _ in range(n)), float, count=n
        )
        if np.abs(out).max(initial=0.0) > 30:
            self.played_frames += 1
        driven = loudspeaker(out, drive=1.5)
        block = np.concatenate([self._history, driven])
        echo = np.convolve(block, self.ir, mode="valid")
        self._history = block[-(self.ir.size - 1) :]
        user = np.fromiter(
            (self._user.popleft() if self._user else 0.0 for _ in range(n)), float, count=n
        )
        noise = self._rng.standard_normal(n) * self.noise_rms
        mixed = np.clip(echo + user + noise, -32768, 32767)
        return bytes(mixed.astype("<i2").tobytes())


class RoomSpeaker:
    """The room's loudspeaker: frames go into the device buffer and play in real time."""

    def __init__(self, room: SimRoom) -> None:
        self._room = room
        self._resampler = Resampler(MIC.rate)
        self.written = 0

    @property
    def format(self) -> AudioFormat:
        return SPEAKER

    async def start(self) -> None:
        return None

    async def write(self, frame: bytes) -> None:
        samples = self._resampler.pcm(np.frombuffer(frame, dtype="<i2"), SPEAKER.rate)
        self._room._air.extend(samples.astype(np.float64))
        self.written += 1

    def flush(self) -> None:
        """Interruption: what is still queued never plays (a device buffer's worth does)."""
        keep = MIC.rate * 40 // 1000
        air = self._room._air
        while len(air) > keep:
            air.pop()

    async def close(self) -> None:
        return None


class RoomMic:
    """The room's microphone, paced by the loop's clock like a sound card."""

    def __init__(self, room: SimRoom) -> None:
        self._room = room
        self._started: float | None = None
        self._frames = 0
        self._progress = asyncio.Event()

    @property
    def format(self) -> AudioFormat:
        return MIC

    @property
    def frames_read(self) -> int:
        return self._frames

    async def until_read(self, count: int) -> None:
        """Return once ``count`` frames in all have been read (tests wait on this clock)."""
        while self._frames < count:
            self._progress.clear()
            await self._progress.wait()

    async def start(self) -> None:
        self._started = asyncio.get_running_loop().time()

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        self._frames += 1
        due = self._started + self._frames * MIC.frame_ms / 1000
        await asyncio.sleep(max(0.0, due - loop.time()))
        self._progress.set()
        return self._room._next_mic_frame()

    async def close(self) -> None:
        return None

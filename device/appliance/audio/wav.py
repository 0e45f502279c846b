"""WAV-file backends: the fake microphone and speaker that ship in the package.

``WavSource`` is the only place that sleeps to fake a clock: it yields one frame per
frame period in real time. ``WavSink`` writes what it is given to a WAV file.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

from appliance.audio.base import AudioFormat
from appliance.audio.frames import Pcm, Rechunker, resample
from appliance.errors import AudioDeviceError


def read_wav(path: Path) -> tuple[Pcm, int]:
    try:
        with wave.open(str(path)) as wav:
            if wav.getsampwidth() != 2:
                raise AudioDeviceError(f"{path}: only 16-bit WAV is supported")
            rate, channels = wav.getframerate(), wav.getnchannels()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    except (OSError, wave.Error, EOFError) as exc:
        raise AudioDeviceError(f"cannot read {path}: {exc}") from exc
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples.astype(np.int16, copy=False), rate


class WavSource:
    """Plays a WAV file as the microphone, then silence (or ``EOFError`` if ``loop_silence``
    is off). ``queue(path)`` adds another clip, e.g. the next question of a demo."""

    def __init__(self, path: Path | None, fmt: AudioFormat, loop_silence: bool = True) -> None:
        self._format = fmt
        self._paths = [path] if path else []
        self._loop_silence = loop_silence
        self._frames: list[bytes] = []
        self._next_at: float | None = None
        self._silence = bytes(fmt.frame_bytes)
        self.frames_read = 0
        self._progress = asyncio.Event()

    @property
    def format(self) -> AudioFormat:
        return self._format

    def queue(self, path: Path) -> None:
        """Append a clip to what the mic will "hear" next."""
        samples, rate = read_wav(path)
        chunker = Rechunker(self._format)
        pcm = resample(samples, rate, self._format.rate)
        pad = np.zeros(self._format.frame_samples, dtype=np.int16)
        self._frames.extend(chunker.push(np.concatenate([pcm, pad])))

    @property
    def playing(self) -> bool:
        return bool(self._frames)

    async def until_read(self, count: int) -> None:
        """Return once ``count`` frames in all have been read (tests wait on the fake mic's
        own clock instead of the wall clock)."""
        await self._until(lambda: self.frames_read >= count)

    async def until_played(self) -> None:
        """Return once every queued clip has been read to its last frame."""
        await self._until(lambda: not self._frames)

    async def _until(self, done: Callable[[], bool]) -> None:
        while True:
            self._progress.clear()
            if done():
                return
            await self._progress.wait()

    async def start(self) -> None:
        for path in self._paths:
            self.queue(path)
        self._paths = []

    async def read(self) -> bytes:
        now = time.monotonic()
        if self._next_at is None:
            self._next_at = now
        delay = self._next_at - now
        if delay > 0:
            await asyncio.sleep(delay)
        self._next_at += self._format.frame_ms / 1000
        self.frames_read += 1
        self._progress.set()
        if self._frames:
            return self._frames.pop(0)
        if not self._loop_silence:
            raise EOFError
        return self._silence

    async def close(self) -> None:
        self._frames.clear()


class WavSink:
    """Writes frames to a WAV file (mono s16)."""

    def __init__(self, path: Path | None, fmt: AudioFormat) -> None:
        self._format = fmt
        self._path = path
        self._wav: wave.Wave_write | None = None
        self.frames: list[bytes] = []
        """Everything written, kept for tests and the demo (bounded by the session length)."""
        self.flushes = 0

    @property
    def format(self) -> AudioFormat:
        return self._format

    async def start(self) -> None:
        if self._path is not None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._wav = wave.open(str(self._path), "wb")  # noqa: SIM115  # closed in close()
            except OSError as exc:
                raise AudioDeviceError(f"cannot write {self._path}: {exc}") from exc
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self._format.rate)

    async def write(self, frame: bytes) -> None:
        self.frames.append(frame)
        if self._wav is not None:
            self._wav.writeframes(frame)

    def flush(self) -> None:
        self.flushes += 1  # a file has no device buffer: nothing queued to drop

    def samples(self) -> Pcm:
        return np.frombuffer(b"".join(self.frames), dtype="<i2")

    async def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None

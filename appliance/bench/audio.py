"""Audio bench: echo cancellation on reproducible synthetic rooms, every engine side by side.

For each engine (``speex``, ``webrtc``, ``half-duplex``, ``off``) and each seeded room
(``appliance.audio.room``: espeak-ng speech, 30–80 ms bulk delay, RT60 0.2–0.4 s, a
``tanh`` loudspeaker, noise):

- **ERLE** over far-end-only speech after 4 s of convergence;
- **double talk**: SI-SDR of the output against the clean near end, and the near end's
  gain through the engine (0 dB = untouched), aligned by the engine's measured latency;
- **barge-in**: webrtcvad (mode 2) on the cleaned 20 ms frames; the user is "heard" at
  ``BARGE_IN_FRAMES`` consecutive speech frames. A trial is a hit if nothing triggered
  in the far-end-only stretch before the user spoke (the device would have interrupted
  itself) and the trigger came within 200 ms of the user's onset. Measured twice:
  webrtcvad alone, and "gated" (a speech frame also has to pass
  ``aec.near_end_present``: ≥ −55 dBFS and at most 20 dB below the raw mic);
- **re-convergence** after an echo-path change (the device is moved): the time until
  the 1 s median of the 250 ms windowed ERLE is back within 10 dB of its level before;
- **CPU** per 10 ms of audio (single thread, ``perf_counter_ns``).

Goals (issue 5): ERLE ≥ 35 dB, double-talk SI-SDR ≥ 10 dB, barge-in within 200 ms in
≥ 80% of trials.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
import webrtcvad

from appliance.audio import room
from appliance.audio.aec import KINDS, make_canceller, near_end_present
from appliance.audio.frames import Pcm, rms_dbfs

RATE = 16_000
FRAME = RATE // 50  # 20 ms capture frames
TAIL_MS = 200
TRIALS = 12
CONVERGE_S = 4.0
BARGE_IN_FRAMES = 3
BARGE_IN_GOAL_MS = 200.0
VAD_MODE = 2
REGROW_DIP_DB = 10.0
"""Re-converged: the ERLE's 1 s median is back within this much of its level before."""


@dataclass
class _BargeIn:
    hits: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    self_interrupts: int = 0
    early_triggers: int = 0
    missed: int = 0

    def score(self, fired: list[int], converged: int, onset: int) -> None:
        """``fired``: frames where the detector fired; ``onset``: the user's first sample."""
        onset_frame = onset // FRAME
        self.early_triggers += sum(1 for f in fired if f < converged)
        if any(converged <= f < onset_frame for f in fired):
            self.self_interrupts += 1
            return
        after = [f for f in fired if f >= onset_frame]
        if not after:
            self.missed += 1
            return
        latency_ms = ((after[0] + 1) * FRAME - onset) * 1000.0 / RATE
        self.latencies_ms.append(latency_ms)
        if latency_ms <= BARGE_IN_GOAL_MS:
            self.hits += 1


@dataclass
class _Tally:
    erle: list[float] = field(default_factory=list)
    si_sdr: list[float] = field(default_factory=list)
    gain: list[float] = field(default_factory=list)
    raw: _BargeIn = field(default_factory=_BargeIn)
    gated: _BargeIn = field(default_factory=_BargeIn)
    reconverge_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    engine: str = ""


def _barge_in_frames(out: Pcm, mic: Pcm | None = None) -> list[int]:
    """Indices of the 20 ms frames at which the barge-in detector fires: webrtcvad on
    ``out``, ``BARGE_IN_FRAMES`` in a row; with ``mic``, only frames that pass
    ``near_end_present`` count."""
    vad = webrtcvad.Vad(VAD_MODE)
    run, fired = 0, []
    pcm = out.astype("<i2").tobytes()
    for i in range(len(out) // FRAME):
        chunk = pcm[i * FRAME * 2 : (i + 1) * FRAME * 2]
        speech = vad.is_speech(chunk, RATE)
        if speech and mic is not None:
            speech = near_end_present(rms_dbfs(mic[i * FRAME : (i + 1) * FRAME]), rms_dbfs(chunk))
        run = run + 1 if speech else 0
        if run == BARGE_IN_FRAMES:
            fired.append(i)
    return fired


def _double_talk_trial(kind: str, seed: int, lag: int, tally: _Tally) -> None:
    rng = np.random.default_rng(10_000 + seed)
    near_at = float(rng.uniform(7.0, 10.0))
    scene = room.make_scene(
        seed, duration_s=near_at + 3.0, converge_s=CONVERGE_S, near_at_s=near_at
    )
    canceller = make_canceller(kind, RATE, TAIL_MS)
    tally.engine = canceller.name
    out, suppressor = room.run_engine(canceller, scene)
    canceller.close()
    tally.cpu_us.append(suppressor.us_per_10ms)
    tally.erle.append(room.erle_db(scene.mic, out, scene.far_only))
    assert scene.double_talk is not None
    assert scene.near_onset is not None
    tally.si_sdr.append(room.si_sdr_db(out, scene.near, scene.double_talk, lag))
    tally.gain.append(room.near_gain_db(out, scene.near, scene.double_talk, lag))
    converged = scene.far_only[0] // FRAME
    tally.raw.score(_barge_in_frames(out), converged, scene.near_onset)
    tally.gated.score(_barge_in_frames(out, scene.mic), converged, scene.near_onset)


def _path_change_trial(kind: str, seed: int, tally: _Tally) -> None:
    change_s = 8.0
    scene = room.make_scene(
        seed, duration_s=14.0, converge_s=CONVERGE_S, near_at_s=None, path_change_at_s=change_s
    )
    canceller = make_canceller(kind, RATE, TAIL_MS)
    out, _ = room.run_engine(canceller, scene)
    canceller.close()
    starts, erle = room.erle_track(scene.mic, out, scene.ref, RATE, window_ms=250)
    change = round(change_s * RATE)
    before = erle[(starts >= scene.far_only[0]) & (starts < change)]
    if not before.size:
        return
    level = float(np.median(before))
    for i in np.flatnonzero(starts >= change):
        stretch = erle[(starts >= starts[i]) & (starts < starts[i] + RATE)]
        if float(np.median(stretch)) >= level - REGROW_DIP_DB:
            tally.reconverge_ms.append(float(starts[i] - change) * 1000.0 / RATE)
            return
    tally.reconverge_ms.append(float(len(scene.mic) - change) * 1000.0 / RATE)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _span(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "n/a"
    return (
        f"median {_median(values):.{digits}f} {unit} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def _barge_in_rows(label: str, b: _BargeIn, trials: int) -> list[tuple[str, str]]:
    rate = b.hits / trials
    return [
        (f"{label} ≤ {BARGE_IN_GOAL_MS:.0f} ms (goal ≥ 80%)",
         f"{b.hits}/{trials} = {rate:.0%}  {'PASS' if rate >= 0.8 else 'FAIL'}; "
         f"latency {_span(b.latencies_ms, 'ms', 0)}"),
        (f"{label}: self-interruptions / missed",
         f"{b.self_interrupts} / {b.missed} of {trials} trials "
         f"(+{b.early_triggers} triggers in the first {CONVERGE_S:.0f} s, converging)"),
    ]  # fmt: skip


def _rows(kind: str, tally: _Tally, trials: int, lag: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if tally.engine != kind:
        rows.append((f"{kind}: engine", f"unavailable, fell back to {tally.engine}"))
    goal_erle = _median(tally.erle) >= 35.0
    goal_sdr = _median(tally.si_sdr) >= 10.0
    adaptive = kind in ("speex", "webrtc")
    rows += [
        (f"{kind}: ERLE far end only (goal ≥ 35 dB)",
         f"{_span(tally.erle, 'dB')}  {'PASS' if goal_erle else 'FAIL'}"),
        (f"{kind}: double-talk SI-SDR (goal ≥ 10 dB)",
         f"{_span(tally.si_sdr, 'dB')}  {'PASS' if goal_sdr else 'FAIL'}"),
        (f"{kind}: double-talk near-end gain", _span(tally.gain, "dB")),
        *_barge_in_rows(f"{kind}: barge-in, webrtcvad alone", tally.raw, trials),
        *_barge_in_rows(f"{kind}: barge-in, gated", tally.gated, trials),
        (f"{kind}: re-convergence after path change",
         _span(tally.reconverge_ms, "ms", 0) if adaptive else "n/a (not adaptive)"),
        (f"{kind}: output latency", f"{lag * 1000 / RATE:.0f} ms"),
        (f"{kind}: CPU per 10 ms of audio",
         f"{_median(tally.cpu_us):.0f} µs = {_median(tally.cpu_us) / 100.0:.2f}% of one core"),
    ]  # fmt: skip
    return rows


def run(trials: int = TRIALS) -> list[tuple[str, str]]:
    first = room.make_scene(0, duration_s=1.0, near_at_s=None)
    rows: list[tuple[str, str]] = [
        ("rooms", f"{trials} seeds: delay 30–80 ms, RT60 0.2–0.4 s, DRR 3–9 dB, "
                  f"tanh drive {first.config.drive}, near end {first.config.near_to_echo_db:+.0f}"
                  f" dB vs echo, SNR {first.config.snr_db:.0f} dB, tail {TAIL_MS} ms"),
    ]  # fmt: skip
    for kind in KINDS:
        probe = make_canceller(kind, RATE, TAIL_MS)
        lag = room.engine_latency(probe, RATE)
        probe.close()
        tally = _Tally()
        for seed in range(trials):
            _double_talk_trial(kind, seed, lag, tally)
            _path_change_trial(kind, seed, tally)
        rows += _rows(kind, tally, trials, lag)
    return rows


if __name__ == "__main__":
    for name, value in run():
        print(f"{name:<48} {value}")

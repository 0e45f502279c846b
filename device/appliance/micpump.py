"""The microphone's pace: read frames, run the front end, hand events to the machine and
audio to the session's uplink; and bring a vanished mic or speaker back.

The mic sets the clock (``last_audio`` feeds the watchdog). While the speaker plays (or its
echo may still be in the room) the uplink carries only what the local gate calls the user's
voice, silence otherwise, so the service's VAD never hears the device's residual echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from appliance import machine as m
from appliance.audio.base import AudioFormat, AudioSink, AudioSource, SinkWrapper
from appliance.audio.frontend import FrontEnd, Heard
from appliance.errors import AudioDeviceError
from appliance.realtime.media import MicTrack
from appliance.tasks import Spawn
from appliance.telemetry import Stats

log = logging.getLogger(__name__)


class AudioDevices:
    """Recovery of the mic and speaker: while one is missing the fault is shown (ERROR), and
    it is reopened with back-off until it is back."""

    def __init__(self, post: Callable[[m.Event], None], stats: Stats) -> None:
        self._post = post
        self._stats = stats
        self.faults: set[str] = set()
        """The devices that are missing now ("microphone", "speaker")."""
        self.last_audio = time.monotonic()
        """When the mic last delivered a frame, or a retry ran (the watchdog's audio clock)."""
        self.started = asyncio.Event()
        """Set once the device can tell how it is: audio flows, or an audio fault is shown."""

    async def recover(
        self,
        what: str,
        exc: AudioDeviceError,
        close: Callable[[], Awaitable[None]],
        start: Callable[[], Awaitable[None]],
    ) -> None:
        """The mic or speaker vanished (USB unplugged, driver reset): show the fault, then
        reopen it with back-off (1 s … 30 s) until it is back. The process stays up and
        keeps systemd's watchdog fed while it retries: a missing device is not a hung
        daemon, and restarting would only crash-loop."""
        log.error("%s failed: %s", what, exc)
        self._stats.last_error = f"{what}: {exc}"
        self.faults.add(what)
        self._post(m.AudioFault(str(exc)))
        self.started.set()
        delay = 1.0
        attempts = 0
        while True:
            with contextlib.suppress(AudioDeviceError):
                await close()
            await asyncio.sleep(delay)
            self.last_audio = time.monotonic()
            attempts += 1
            try:
                await start()
            except AudioDeviceError as again:
                if attempts in (1, 5) or attempts % 20 == 0:
                    log.warning("%s still missing after %d tries: %s", what, attempts, again)
                delay = min(30.0, delay * 2)
                continue
            log.info("%s back after %d tries", what, attempts)
            self.faults.discard(what)
            if not self.faults:
                self._stats.last_error = ""
                self._post(m.AudioRestored())
            return


class GuardedSink(SinkWrapper):
    """The speaker, guarded: if it vanishes, its recovery starts in the background (once)
    and frames are dropped (not raised into the playout) until it is back."""

    def __init__(self, sink: AudioSink, devices: AudioDevices, spawn: Spawn) -> None:
        super().__init__(sink)
        self._devices = devices
        self._spawn = spawn

    def failed(self, exc: AudioDeviceError) -> None:
        if "speaker" not in self._devices.faults:
            recovery = self._devices.recover("speaker", exc, self.sink.close, self.sink.start)
            self._spawn(recovery, "speaker")

    async def write(self, frame: bytes) -> None:
        if "speaker" in self._devices.faults:
            return
        try:
            await self.sink.write(frame)
        except AudioDeviceError as exc:
            self.failed(exc)


class MicPump:
    """Reads the mic until it ends, and routes what the front end heard."""

    def __init__(
        self,
        source: AudioSource,
        frontend: FrontEnd | None,
        devices: AudioDevices,
        post: Callable[[m.Event], None],
        stats: Stats,
        *,
        state: Callable[[], m.State],
        uplink: Callable[[], MicTrack | None],
        mic_format: AudioFormat,
        barge_in: bool,
    ) -> None:
        self.source = source
        self.frontend = frontend
        self.devices = devices
        self._post = post
        self._stats = stats
        self._state = state
        self._uplink = uplink
        """The session's mic track while the session takes audio, else ``None``."""
        self._silence = bytes(mic_format.frame_bytes)
        self._barge_in = barge_in
        self._converged = False

    async def run(self) -> None:
        source = self.source
        try:
            await source.start()
        except AudioDeviceError as exc:  # no mic at boot: READY, ERROR shown, retried
            await self.devices.recover("microphone", exc, source.close, source.start)
        while True:
            try:
                frame = await source.read()
            except EOFError:
                return
            except AudioDeviceError as exc:
                await self.devices.recover("microphone", exc, source.close, source.start)
                continue
            self.devices.last_audio = time.monotonic()
            self.devices.started.set()
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        fe = self.frontend
        if fe is not None:  # frames lost to an overflow: keep the reference aligned
            fe.capture_dropped(getattr(self.source, "dropped_frames", 0))
        heard = fe.process(frame) if fe is not None else [Heard(frame)]
        for h in heard:
            if h.wake is not None:
                log.info("wake word %s", h.wake, extra={"event_type": "wake"})
                self._stats.wakes += 1
                self._stats.woke = True
                if fe is not None:
                    fe.new_turn()
                self._post(m.WakeDetected(h.wake))
            if h.speech_started:
                self._heard_speech()
            track = self._uplink()
            if track is not None:
                track.push(h.frame if h.user or not self._echo_risk() else self._silence)
        if fe is not None and fe.full_duplex != self._converged:
            self._converged = fe.full_duplex
            self._post(m.EchoConverged(self._converged))

    def _echo_risk(self) -> bool:
        """The speaker plays or just did (a reply, an earcon, the tail after a barge-in)."""
        return self.frontend is not None and self.frontend.speaker_audible

    def _heard_speech(self) -> None:
        """The local gate heard the user start speaking (on the echo-suppressed signal)."""
        state = self._state()
        if state is m.State.SPEAKING and self._barge_in:
            self._stats.barge_ins += 1
            fe = self.frontend
            levels = (
                f" (mic {fe.echo.mic_dbfs:.0f} dBFS, {fe.echo.out_dbfs:.0f} after echo"
                f" suppression; user floor {fe.floor_dbfs:.0f} dBFS, at most"
                f" {fe.max_attenuation_db:.0f} dB removed)"
                if fe is not None
                else ""
            )
            log.info(
                "barge-in: the user spoke over the reply%s",
                levels,
                extra={"event_type": "barge_in"},
            )
            self._post(m.SpeechStarted())
        elif state is m.State.LISTENING:
            self._post(m.SpeechStarted())  # the user is talking: the turn cap replaces no-speech

"""The dispatcher: it feeds events to the machine and performs the effects that come out.

One ``asyncio.Queue`` of events, one dispatcher. Threads (gpiozero callbacks) hand events over
with ``loop.call_soon_threadsafe``; sessions, timers, the mic pump and tools post events back.
The LEDs are set from the state after every step (level-triggered). The parts it drives each
live in a module of their own: ``session_runner`` (the session), ``micpump`` (the mic, echo
gating and audio-device recovery), ``announce``, ``telemetry`` and ``wiring``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from appliance import announce
from appliance import machine as m
from appliance.audio.base import AudioSink, AudioSource
from appliance.audio.earcons import cue_frames
from appliance.audio.frontend import FrontEnd
from appliance.config import Config
from appliance.errors import AudioDeviceError, ProvisioningError
from appliance.leds import PATTERNS, LedDriver
from appliance.realtime.keys import KeySource
from appliance.realtime.live import LiveRelay
from appliance.realtime.media import MicTrack
from appliance.realtime.tools import ToolRegistry
from appliance.realtime.webrtc import RealtimeSession
from appliance.tasks import Tasks
from appliance.telemetry import Stats, Vitals, echo_vitals, health, status_text
from appliance.wiring import make_machine, make_parts

log = logging.getLogger(__name__)


class App:
    def __init__(
        self,
        config: Config,
        *,
        source: AudioSource,
        sink: AudioSink,
        keys: KeySource,
        tools: ToolRegistry,
        leds: LedDriver | None = None,
        on_state: Callable[[m.State], None] | None = None,
        frontend: FrontEnd | None = None,
        relay: LiveRelay | None = None,
        probe: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.frontend = frontend
        """Echo suppression, speech gate and wake word (``None``: raw mic, no wake word)."""
        self.tools = tools
        self.leds = leds
        self.on_state = on_state
        """Called with the new state at every state change (after the LEDs)."""
        self.probe = probe
        """Checks that the provisioning server answers (raises ``ProvisioningUnavailable``);
        ``None``: nothing to check, the device goes back to IDLE after an OFFLINE back-off."""
        self.machine = make_machine(config, frontend)
        self.snapshot = m.Snapshot()
        self.stats = Stats()
        self.tasks = Tasks()
        self._queue: asyncio.Queue[m.Event] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._started = time.monotonic()
        parts = make_parts(
            config,
            source=source,
            sink=sink,
            keys=keys,
            tools=tools,
            frontend=frontend,
            relay=relay,
            post=self.post,
            state=lambda: self.snapshot.state,
            stats=self.stats,
            spawn=self.tasks.spawn,
            status=lambda: health(self.vitals(), self._uptime(), transcripts=False),
        )
        self.devices, self.sessions, self.pump = parts.devices, parts.sessions, parts.pump
        self.sink, self._speaker = parts.sink, parts.speaker
        self.announcements, self.timers = parts.announcements, parts.timers

    # ------------------------------------------------------------------ what others read

    @property
    def session(self) -> RealtimeSession | None:
        return self.sessions.session

    @property
    def mic(self) -> MicTrack:
        return self.sessions.mic

    @property
    def last_error(self) -> str:
        return self.stats.last_error

    @last_error.setter
    def last_error(self, reason: str) -> None:
        self.stats.last_error = reason

    @property
    def barge_ins(self) -> int:
        return self.stats.barge_ins

    @property
    def last_audio(self) -> float:
        """When the mic last delivered a frame (the watchdog's audio clock)."""
        return self.devices.last_audio

    @property
    def started(self) -> asyncio.Event:
        """Set once the device can tell how it is: audio flows, or an audio fault is shown."""
        return self.devices.started

    def vitals(self) -> Vitals:
        wake = self.config.activation.wake_word
        return Vitals(self.snapshot, self.stats, wake, echo_vitals(self.frontend))

    def status_text(self) -> str:
        """One line for systemd's STATUS=: what the device is doing now."""
        return status_text(self.vitals())

    def _uptime(self) -> float:
        return time.monotonic() - self._started

    # ------------------------------------------------------------------ events in

    def post(self, event: m.Event) -> None:
        """Queue an event (call from the loop's thread)."""
        self._queue.put_nowait(event)

    async def drained(self) -> None:
        """Wait until every event queued so far has been dispatched."""
        await self._queue.join()

    def post_threadsafe(self, event: m.Event) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.post, event)

    def announce(self, kind: str, instructions: str) -> None:
        """Say something out of band as soon as the device is idle (connecting if needed)."""
        self.announcements.add(kind, instructions, self.snapshot.state)

    def server_unreachable(self, exc: ProvisioningError) -> None:
        """The provisioning server did not answer while no conversation runs (boot, a
        heartbeat, a probe): OFFLINE with the reason, probing again with back-off."""
        if self.snapshot.state in (m.State.IDLE, m.State.OFFLINE) and not self.snapshot.resume:
            self.last_error = str(exc)
        self.post(m.Unreachable(str(exc), exc.retry_after))

    def server_reachable(self) -> None:
        if self.snapshot.state is m.State.OFFLINE and not self.snapshot.resume:
            self.last_error = ""
        self.post(m.Reachable())

    async def _probe(self) -> None:
        if self.probe is None:
            self.server_reachable()
            return
        try:
            await self.probe()
        except ProvisioningError as exc:
            log.warning("still offline: %s", exc)
            self.server_unreachable(exc)
        else:
            log.info("the provisioning server answers again")
            self.server_reachable()

    # ------------------------------------------------------------------ main loop

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._show(self.snapshot.state)
        try:
            await self.sink.start()
        except AudioDeviceError as exc:  # missing at boot: shown and retried, like an unplug
            self._speaker.failed(exc)
        self.tasks.spawn(self.pump.run(), "mic")
        waiter = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                try:
                    self._dispatch(getter.result())
                finally:
                    self._queue.task_done()
        finally:
            waiter.cancel()
            await self.shutdown()

    def attach_leds(self, leds: LedDriver | None) -> None:
        """Use these LEDs from now on, showing the current state at once."""
        self.leds = leds
        self._show(self.snapshot.state)

    def _dispatch(self, event: m.Event) -> None:
        before = self.snapshot
        self.snapshot, effects = self.machine.step(before, event)
        after = self.snapshot
        timed_out = isinstance(event, m.TimerFired) and event.name is m.TimerName.CONNECT
        if timed_out and after.state is not before.state:
            self.last_error = f"timed out: no session within {self.machine.timings.connect_s:g} s"
        if type(event) is not m.TimerFired or effects or after != before:
            log.debug("%s + %s -> %s", before.state.name, type(event).__name__, after.state.name)
        if after.epoch != before.epoch:
            for handle in self._timers:
                handle.cancel()  # the epoch already makes them stale; this just tidies up
            self._timers.clear()
        if after.state is not before.state:
            log.info(
                "state %s -> %s",
                before.state.name,
                after.state.name,
                extra={"state": after.state.name},
            )
            self.stats.entered(before.state, after.state, after, time.monotonic())
            self._show(after.state)
            self.announcements.entered(after.state)
        for effect in effects:
            self._perform(effect)

    def _show(self, state: m.State) -> None:
        if self.leds is not None:
            self.leds.show(PATTERNS[state])
        if self.on_state is not None:
            self.on_state(state)

    # ------------------------------------------------------------------ effects out

    def _perform(self, effect: m.Effect) -> None:
        session = self.session
        spawn = self.tasks.spawn
        match effect:
            case m.StartTimer(name=name, seconds=seconds, epoch=epoch):
                assert self._loop is not None
                event = m.TimerFired(name, epoch)
                if name is m.TimerName.RETRY:  # full jitter keeps a fleet from retrying in step
                    seconds = random.uniform(seconds / 2, seconds)  # noqa: S311  # not crypto
                self._timers.append(self._loop.call_later(seconds, self.post, event))
            case m.OpenSession():
                spawn(self.sessions.open(resume=self.snapshot.resume), "open-session")
            case m.Probe():
                spawn(self._probe(), "probe")
            case m.CloseSession():
                spawn(self.sessions.close(), "close-session")
            case m.OpenUplink():
                self.sessions.set_uplink(True)
            case m.CloseUplink():
                self.sessions.set_uplink(False)
            case m.PlayCue(name=name):
                spawn(self._play_cue(name), "cue")
            case m.RunTool(call_id=call_id, name=name, arguments=arguments):
                self.stats.tool_calls += 1
                spawn(self._run_tool(call_id, name, arguments), f"tool-{name}")
            case _ if session is None:
                log.debug("no session for %s", type(effect).__name__)
            case m.Announce(kind="queued"):
                queued = self.announcements.next()
                if queued is not None:
                    session.announce(*queued)
            case m.Announce(kind=kind) if self.config.session.announce_reconnect:
                session.announce(kind, announce.instructions(kind))
            case m.SetTurnDetection(server_vad=server_vad):
                session.set_turn_detection(server_vad)
            case m.CommitInput():
                session.commit_input()
            case m.RequestResponse():
                session.request_response()
            case m.CancelReply():
                session.interrupt()
            case m.SendToolOutput(call_id=call_id, output=output):
                session.send_tool_output(call_id, output)

    async def _run_tool(self, call_id: str, name: str, arguments: str) -> None:
        output = await self.tools.call(name, arguments)
        log.info("tool %s -> %s", name, output[:200])
        self.post(m.ToolFinished(call_id, output))

    async def _play_cue(self, name: str) -> None:
        for frame in cue_frames(name, self.sink.format):
            await self.sink.write(frame)

    async def shutdown(self) -> None:
        self.timers.close()
        for handle in self._timers:
            handle.cancel()
        await self.sessions.close()
        await self.tasks.cancel_all()
        await self.source.close()
        await self.sink.close()
        if self.frontend is not None:
            self.frontend.close()
        if self.leds is not None:
            self.leds.close()

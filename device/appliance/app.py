"""The only module that knows every part: it feeds events to the machine and performs effects.

One ``asyncio.Queue`` of events, one dispatcher. Threads (gpiozero callbacks) hand events over
with ``loop.call_soon_threadsafe``; sessions, timers and tools post events back. The LEDs are
set from the state after every step (level-triggered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from appliance import machine as m
from appliance.audio.base import AudioFormat, AudioSink, AudioSource, SinkWrapper
from appliance.audio.earcons import cue_frames
from appliance.audio.frontend import DSP_FORMAT, FrontEnd, Heard
from appliance.camera import data_url, jpeg_budget, jpeg_that_fits, make_camera
from appliance.config import Config
from appliance.devicetools import GainSink, Timers, Volume, register_device_tools
from appliance.errors import (
    AudioDeviceError,
    BackendMoved,
    CallRejected,
    ClockSkew,
    ConfigError,
    ConnectTimeout,
    DeviceRevoked,
    ProvisioningError,
    RealtimeUnreachable,
    SessionError,
)
from appliance.leds import PATTERNS, LedDriver
from appliance.realtime import messages as msg
from appliance.realtime import session_config
from appliance.realtime.keys import KeySource
from appliance.realtime.live import LiveRelay, LiveSession
from appliance.realtime.media import MicTrack
from appliance.realtime.tools import Tool, ToolRegistry
from appliance.realtime.webrtc import RealtimeSession

log = logging.getLogger(__name__)


@dataclass
class Stats:
    turns: int = 0
    last_turn_latency_ms: float | None = None
    """From the end of the user's turn to the first reply audio."""
    reconnects: int = 0
    """Sessions reopened on our own after a call broke off mid-conversation."""
    false_wakes: int = 0
    """Wake-word activations after which nobody spoke."""
    wakes: int = 0
    tool_calls: int = 0
    transcripts: list[tuple[str, str]] = field(default_factory=list)
    states: list[tuple[float, m.State]] = field(default_factory=list)


class GuardedSink(SinkWrapper):
    """The speaker, guarded: if it vanishes, ``on_fault`` starts its recovery and frames
    are dropped (not raised into the playout) until ``faulted()`` says it is back."""

    def __init__(
        self,
        sink: AudioSink,
        on_fault: Callable[[AudioDeviceError], None],
        faulted: Callable[[], bool],
    ) -> None:
        super().__init__(sink)
        self._on_fault = on_fault
        self._faulted = faulted

    async def write(self, frame: bytes) -> None:
        if self._faulted():
            return
        try:
            await self.sink.write(frame)
        except AudioDeviceError as exc:
            self._on_fault(exc)


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
        self.relay = relay
        """Opens GPT-Live sessions (the provisioning server); ``None``: Realtime only."""
        self.backend = "realtime"
        """The backend of the next session; the server moves it (``BackendMoved``)."""
        self.source = source
        self.frontend = frontend
        """Echo suppression, speech gate and wake word (``None``: raw mic, no wake word)."""
        self.volume = Volume(config.device.state_dir / "volume.json")
        self._speaker = sink
        self._audio_faults: set[str] = set()
        guarded = GuardedSink(sink, self._speaker_failed, lambda: "speaker" in self._audio_faults)
        speaker = frontend.tap(guarded) if frontend is not None else guarded
        self.sink: AudioSink = GainSink(speaker, self.volume)  # the tap hears the volume too
        self.timers = Timers(self._timer_fired)
        self._announcements: deque[tuple[str, str]] = deque()
        self.camera = make_camera(config.device.camera)
        if config.realtime.tools:
            register_device_tools(
                tools, volume=self.volume, timers=self.timers, status=self._status
            )
            if self.camera is not None:
                tools.register(
                    Tool(
                        "look",
                        "Take a photo with the device's camera to see what is in front of it; "
                        "the photo is added to the conversation.",
                        self._look,
                        timeout_s=15.0,
                    )
                )
        self.keys = keys
        self.tools = tools
        self.leds = leds
        self.probe = probe
        """Checks that the provisioning server answers (raises ``ProvisioningUnavailable``);
        ``None``: nothing to check, the device goes back to IDLE after an OFFLINE back-off."""
        self._on_state = on_state
        s = config.session
        self.snapshot = m.Snapshot(
            timings=m.Timings(
                connect_s=s.connect_s,
                no_speech_s=s.no_speech_s,
                max_turn_s=s.max_turn_s,
                reply_s=s.reply_s,
                session_idle_s=s.idle_close_s,
                dictation=config.realtime.mode == "transcription",
            )
        )
        self.mic_format = DSP_FORMAT if frontend is not None else source.format
        self.mic = MicTrack(self.mic_format)
        self._silence = bytes(self.mic_format.frame_bytes)
        self.barge_ins = 0
        """Replies the user interrupted by voice, heard locally after echo suppression."""
        self.session: RealtimeSession | None = None
        self.stats = Stats()
        self.last_audio = time.monotonic()
        """When the mic last delivered a frame (the watchdog's audio clock)."""
        self._queue: asyncio.Queue[m.Event] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._session_task: asyncio.Task[None] | None = None
        self._turn_ended_at: float | None = None
        self._woke = False
        self._started = time.monotonic()
        self.audio_flowing = asyncio.Event()
        """Set once the first mic frame arrived."""
        self.started = asyncio.Event()
        """Set once the device can tell how it is: audio flows, or an audio fault is shown."""
        self.last_error = ""
        """Why the last session failed or was lost (for status text and support)."""
        self.history: deque[tuple[str, str]] = deque(maxlen=max(1, s.carry_items))
        """Recent (role, transcript) items, carried over into a new session."""
        self.last_turn_at = 0.0

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

    # ------------------------------------------------------------------ main loop

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._show(self.snapshot.state)
        try:
            await self.sink.start()
        except AudioDeviceError as exc:  # missing at boot: shown and retried, like an unplug
            self._speaker_failed(exc)
        self._spawn(self._pump_mic(), "mic")
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

    def _dispatch(self, event: m.Event) -> None:
        before = self.snapshot
        self.snapshot, effects = m.step(before, event)
        timed_out = isinstance(event, m.TimerFired) and event.name is m.TimerName.CONNECT
        if timed_out and self.snapshot.state is not before.state:
            self.last_error = f"timed out: no session within {before.timings.connect_s:g} s"
        if type(event) is not m.TimerFired or effects or self.snapshot != before:
            log.debug(
                "%s + %s -> %s", before.state.name, type(event).__name__, self.snapshot.state.name
            )
        if self.snapshot.epoch != before.epoch:
            for handle in self._timers:
                handle.cancel()  # the epoch already makes them stale; this just tidies up
            self._timers.clear()
        if self.snapshot.state is not before.state:
            self._entered(before.state, self.snapshot.state)
        for effect in effects:
            self._perform(effect)

    def _entered(self, old: m.State, new: m.State) -> None:
        now = time.monotonic()
        self.stats.states.append((now, new))
        log.info("state %s -> %s", old.name, new.name, extra={"state": new.name})
        if new is m.State.THINKING and old is m.State.LISTENING:
            self._turn_ended_at = now
        if old is m.State.OFFLINE and new is m.State.CONNECTING and self.snapshot.resume:
            self.stats.reconnects += 1
        woke_for_nothing = self._woke and not self.snapshot.heard_user
        if old is m.State.LISTENING and new is m.State.IDLE and woke_for_nothing:
            self.stats.false_wakes += 1
        if new in (m.State.THINKING, m.State.IDLE, m.State.OFFLINE, m.State.ERROR):
            self._woke = False
        if new is m.State.SPEAKING and self._turn_ended_at is not None:
            latency = (now - self._turn_ended_at) * 1000
            self.stats.last_turn_latency_ms = latency
            self.stats.turns += 1
            self._turn_ended_at = None
            log.info(
                "reply started %.0f ms after the end of the turn",
                latency,
                extra={"latency_ms": round(latency)},
            )
        self._show(new)
        if new is m.State.IDLE:
            self._flush_announcements()
        session = self.session
        if new is m.State.IDLE and session is not None:
            age = time.monotonic() - session.opened_at
            if age >= self.config.session.max_age_s:
                log.info("rolling the session over after %.0f s (before the service's cap)", age)
                self._spawn(self._rollover(), "rollover")

    def announce(self, kind: str, instructions: str) -> None:
        """Say something out of band as soon as the device is idle (connecting if needed)."""
        self._announcements.append((kind, instructions))
        self._flush_announcements()

    def _flush_announcements(self) -> None:
        if self._announcements and self.snapshot.state is m.State.IDLE:
            self.post(m.AnnouncementDue())

    def _timer_fired(self, label: str) -> None:
        self.announce(
            "timer",
            f"Tell the user, in one short sentence, that their timer is up: {label}.",
        )

    async def _look(self) -> dict[str, Any]:
        session, camera = self.session, self.camera
        if session is None or camera is None:
            raise RuntimeError("no open session or no camera")
        rgb = await asyncio.to_thread(camera.capture)
        budget = jpeg_budget(session.max_message_size)
        jpeg, width, height = await asyncio.to_thread(jpeg_that_fits, rgb, budget)
        if isinstance(session, LiveSession):
            session.send_image(data_url(jpeg))
        else:
            session.send(msg.user_image(data_url(jpeg)))
        log.info("photo sent: %dx%d, %d bytes", width, height, len(jpeg))
        return {"photo": f"{width}x{height} JPEG added to the conversation"}

    def _status(self) -> dict[str, Any]:
        from appliance.heartbeat import health

        return health(self, self._started, transcripts=False)

    async def _rollover(self) -> None:
        await self._close_session()
        self.post(m.SessionLost("rolled over before the session cap"))

    def status_text(self) -> str:
        """One line for systemd's STATUS=: what the device is doing now."""
        state = self.snapshot.state
        match state:
            case m.State.IDLE:
                wake = self.config.activation.wake_word
                return f"idle, wake word {wake}" if wake else "idle, press the button to talk"
            case m.State.LISTENING | m.State.THINKING | m.State.SPEAKING:
                return f"in conversation ({state.value})"
            case m.State.OFFLINE:
                retry = self.snapshot.retry_s
                return f"offline: {self.last_error or 'unreachable'}, retry in {retry:.0f} s"
            case m.State.ERROR:
                return f"error: {self.last_error or 'unknown'}"
        return str(state.value)

    def _show(self, state: m.State) -> None:
        if self.leds is not None:
            self.leds.show(PATTERNS[state])
        if self._on_state is not None:
            self._on_state(state)

    # ------------------------------------------------------------------ effects out

    def _perform(self, effect: m.Effect) -> None:
        session = self.session
        match effect:
            case m.StartTimer(name=name, seconds=seconds, epoch=epoch):
                assert self._loop is not None
                event = m.TimerFired(name, epoch)
                if name is m.TimerName.RETRY:  # full jitter keeps a fleet from retrying in step
                    seconds = random.uniform(seconds / 2, seconds)  # noqa: S311  # not crypto
                self._timers.append(self._loop.call_later(seconds, self.post, event))
            case m.OpenSession():
                self._session_task = self._spawn(self._open_session(), "open-session")
            case m.Probe():
                self._spawn(self._probe(), "probe")
            case m.CloseSession():
                self._spawn(self._close_session(), "close-session")
            case m.OpenUplink():
                self.mic.uplink_open = True
                if isinstance(session, LiveSession):
                    session.set_uplink(True)
            case m.CloseUplink() if self._keep_listening():
                pass  # full duplex: the service's VAD hears a barge-in during the reply
            case m.CloseUplink():
                self.mic.uplink_open = False
                if isinstance(session, LiveSession):
                    session.set_uplink(False)
            case m.PlayCue(name=name):
                self._spawn(self._play_cue(name), "cue")
            case m.Announce(kind="queued"):
                if session is not None and self._announcements:
                    session.announce(*self._announcements.popleft())
            case m.Announce(kind=kind):
                if session is not None and self.config.session.announce_reconnect:
                    session.announce(kind, ANNOUNCEMENTS.get(kind, kind))
            case m.RunTool(call_id=call_id, name=name, arguments=arguments):
                self.stats.tool_calls += 1
                self._spawn(self._run_tool(call_id, name, arguments), f"tool-{name}")
            case _ if session is None:
                log.debug("no session for %s", type(effect).__name__)
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

    def _echo_risk(self) -> bool:
        """The speaker plays or just did (a reply, an earcon, the tail after a barge-in):
        the uplink then carries only what the local gate calls the user's voice, so the
        service's VAD never hears the device's residual echo."""
        return self.frontend is not None and self.frontend.speaker_audible

    def _keep_listening(self) -> bool:
        """Leave the mic open while the model answers a hands-free turn? Only when a real
        echo canceller runs (the model must not hear itself) and server VAD is on."""
        return (
            self.frontend is not None
            and self.frontend.full_duplex
            and self.config.activation.barge_in
            and self.snapshot.state in (m.State.THINKING, m.State.SPEAKING)
            and not self.snapshot.manual_turns
        )

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def session_config(self) -> dict[str, Any]:
        return session_config.build(self.config, self.tools.schemas())

    def _new_session(self) -> RealtimeSession:
        """A session on the current backend (the group's choice, learnt from the server)."""
        session: RealtimeSession
        if self.backend == "live" and self.relay is not None:
            session = LiveSession(
                relay=self.relay,
                tools=self.tools.schemas() if self.config.realtime.tools else [],
                mic=self.mic,
                sink=self.sink,
                on_event=lambda event: self._from_session(session, event),
                on_transcript=self._transcript,
                liveness_s=self.config.session.liveness_s,
            )
            return session
        session = RealtimeSession(
            keys=self.keys,
            session=self.session_config(),
            mic=self.mic,
            sink=self.sink,
            on_event=lambda event: self._from_session(session, event),
            on_transcript=self._transcript,
            liveness_s=self.config.session.liveness_s,
        )
        return session

    async def _open_session(self, moves: int = 0) -> None:
        await self._close_session()
        uplink_open = self.mic.uplink_open
        self.mic = MicTrack(self.mic_format)  # a fresh track: nothing stale goes out
        self.mic.uplink_open = uplink_open
        session = self._new_session()
        self.session = session
        carry = self.snapshot.resume or (
            time.monotonic() - self.last_turn_at < self.config.session.carry_over_s
        )
        try:
            await asyncio.wait_for(session.connect(), self.config.session.connect_s)
        except (TimeoutError, ConnectTimeout):
            reason = f"timed out: no session within {self.config.session.connect_s:g} s"
            await self._fail(session, m.SessionFailed(reason, offline=True))
        except BackendMoved as exc:
            if self.session is session:
                self.session = None
            await session.close()
            if moves or (exc.backend == "live" and self.relay is None):
                await self._fail(session, m.SessionFailed(str(exc)))
                return
            log.info("the group moved this device to the %s backend", exc.backend)
            self.backend = exc.backend
            await self._open_session(moves + 1)
        except ClockSkew as exc:  # shown as what it is, never as a revocation
            await self._fail(session, m.SessionFailed(f"clock skew: {exc}", lasting=True))
        except DeviceRevoked as exc:
            await self._fail(session, m.SessionFailed(f"device refused: {exc}", lasting=True))
        except ProvisioningError as exc:
            await self._fail(session, m.SessionFailed(str(exc), True, exc.retry_after))
        except RealtimeUnreachable as exc:
            await self._fail(session, m.SessionFailed(str(exc), offline=True))
        except CallRejected as exc:
            offline = exc.status == 429 or exc.status >= 500
            await self._fail(session, m.SessionFailed(str(exc), offline=offline))
        except SessionError as exc:
            await self._fail(session, m.SessionFailed(str(exc), offline=True))
        except Exception as exc:  # a bug or a surprise: shown, logged once, never a hang
            log.exception("opening a session failed unexpectedly")
            reason = f"unexpected {type(exc).__name__}: {exc}"
            await self._fail(session, m.SessionFailed(reason[:200]))
        else:
            if self.session is session:
                self.last_error = ""
                if carry and self.history:
                    log.info("carrying %d conversation items over", len(self.history))
                    session.seed(list(self.history))
                self.post(m.SessionUp())

    async def _fail(self, session: RealtimeSession, event: m.SessionFailed) -> None:
        log.warning("could not open a session: %s", event.reason)
        self.last_error = event.reason
        if self.session is session:
            self.session = None
        await session.close()
        self.post(event)

    def _from_session(self, session: RealtimeSession, event: m.Event) -> None:
        if session is not self.session:
            return  # a stale session's last words
        if isinstance(event, m.SessionLost):
            self.last_error = event.reason
            self.session = None
            self.sink.flush()  # whatever was queued belongs to a conversation that broke off
            if session.partial_reply:  # carry over what the user heard of the broken reply
                self.history.append(("assistant", session.partial_reply + " …"))
            self._spawn(session.close(), "close-lost-session")
        self.post(event)

    def _transcript(self, role: str, text: str) -> None:
        self.stats.transcripts.append((role, text))
        if role in ("user", "assistant"):
            self.history.append((role, text))
            self.last_turn_at = time.monotonic()
        if role == "user" and self.config.realtime.transcript_url:
            self._spawn(self._post_transcript(text), "post-transcript")
        level = self.config.logging.transcripts
        if level != "OFF":
            log.log(logging.getLevelName(level), "%s: %s", role, text, extra={"role": role})

    async def _post_transcript(self, text: str) -> None:
        """Dictation: hand what was heard to the configured URL (errors are logged)."""
        body = {"device": self.config.device.name, "text": text, "at": time.time()}
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                response = await http.post(self.config.realtime.transcript_url, json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("transcript not delivered: %s", type(exc).__name__)

    async def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()

    async def _run_tool(self, call_id: str, name: str, arguments: str) -> None:
        output = await self.tools.call(name, arguments)
        log.info("tool %s -> %s", name, output[:200])
        self.post(m.ToolFinished(call_id, output))

    async def _play_cue(self, name: str) -> None:
        for frame in cue_frames(name, self.sink.format):
            await self.sink.write(frame)

    async def _pump_mic(self) -> None:
        try:
            await self.source.start()
        except AudioDeviceError as exc:  # no mic at boot: READY, ERROR shown, retried
            await self._recover_audio("microphone", exc, self.source.close, self.source.start)
        while True:
            try:
                frame = await self.source.read()
            except EOFError:
                return
            except AudioDeviceError as exc:
                await self._recover_audio("microphone", exc, self.source.close, self.source.start)
                continue
            self.last_audio = time.monotonic()
            self.audio_flowing.set()
            if self.frontend is not None:  # frames lost to an overflow: keep the reference aligned
                self.frontend.capture_dropped(getattr(self.source, "dropped_frames", 0))
            self.started.set()
            heard = self.frontend.process(frame) if self.frontend is not None else [Heard(frame)]
            for h in heard:
                if h.wake is not None:
                    log.info("wake word %s", h.wake, extra={"event_type": "wake"})
                    self.stats.wakes += 1
                    self._woke = True
                    if self.frontend is not None:
                        self.frontend.new_turn()
                    self.post(m.WakeDetected(h.wake))
                if h.speech_started:
                    self._heard_speech()
                if self.session is not None and self.session.accepting_audio:
                    self.mic.push(h.frame if h.user or not self._echo_risk() else self._silence)

    async def _recover_audio(
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
        self.last_error = f"{what}: {exc}"
        self._audio_faults.add(what)
        self.post(m.AudioFault(str(exc)))
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
            self._audio_faults.discard(what)
            if not self._audio_faults:
                self.last_error = ""
                self.post(m.AudioRestored())
            return

    def _speaker_failed(self, exc: AudioDeviceError) -> None:
        """Called by the speaker guard: recover it in the background (frames are dropped
        meanwhile), once."""
        if "speaker" not in self._audio_faults:
            device = self._speaker
            self._spawn(self._recover_audio("speaker", exc, device.close, device.start), "speaker")

    def _heard_speech(self) -> None:
        """The local gate heard the user start speaking (on the echo-suppressed signal)."""
        state = self.snapshot.state
        if state is m.State.SPEAKING and self.config.activation.barge_in:
            self.barge_ins += 1
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
            self.post(m.SpeechStarted())
        elif state is m.State.LISTENING:
            self.post(m.SpeechStarted())  # the user is talking: the turn cap replaces no-speech

    async def shutdown(self) -> None:
        self.timers.close()
        for handle in self._timers:
            handle.cancel()
        await self._close_session()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.source.close()
        await self.sink.close()
        if self.frontend is not None:
            self.frontend.close()
        if self.leds is not None:
            self.leds.close()


ANNOUNCEMENTS = {
    "reconnected": (
        "In one short sentence, in the language of the conversation so far, tell the user "
        "the connection dropped for a moment and is back, so they can go on."
    ),
}
"""Instructions for out-of-band announcements, by kind."""

# ---------------------------------------------------------------------- building the parts


def make_audio(config: Config) -> tuple[AudioSource, AudioSink]:
    """The mic and speaker the config asks for (``AudioDeviceError`` if they are missing)."""
    cap = AudioFormat(rate=config.audio.capture_rate)
    play = AudioFormat(rate=config.audio.playback_rate)
    if config.audio.backend == "wav":
        from appliance.audio.wav import WavSink, WavSource

        return WavSource(config.audio.wav_input, cap), WavSink(config.audio.wav_output, play)
    from appliance.audio.alsa import AlsaSink, AlsaSource

    return (
        AlsaSource(config.audio.input_device, cap),
        AlsaSink(config.audio.output_device, play),
    )


def make_frontend(config: Config, capture: AudioFormat) -> FrontEnd:
    """Echo suppression (``audio.aec``), the speech gate and the wake word, as configured."""
    return FrontEnd(config, capture)


def make_gpio(config: Config, app: App) -> tuple[LedDriver | None, Any]:
    """LEDs and the button of the configured board, through gpiozero's pin factory
    (``GPIOZERO_PIN_FACTORY``: lgpio on a Pi, ``mock`` for fakes). Returns (leds, button)."""
    from gpiozero import Button
    from gpiozero.exc import GPIOZeroError

    from appliance.boards import PROFILES, make_leds
    from appliance.button import ButtonEvents

    board = PROFILES[config.device.board]
    leds: LedDriver | None = None
    button: Any = None
    try:
        leds = make_leds(board)
        if config.activation.button and board.button_pin is not None:
            gz = Button(board.button_pin, hold_time=config.activation.hold_s)
            mute_s = config.activation.mute_s or None
            button = ButtonEvents(gz, asyncio.get_running_loop(), app.post, mute_s)
    except GPIOZeroError as exc:  # restarting will not free a pin: exit 78, named
        raise ConfigError(
            "device.board", f"GPIO setup failed on board {board.name}: {exc}"
        ) from exc
    return leds, button

"""The conversation's session: open it (on the backend the server chose), close it, follow it.

Opening turns every failure into one ``SessionFailed`` the machine understands; an open
session's events reach the machine only while it is the current one. Transcripts are kept
for carry-over into the next session (and posted to ``realtime.transcript_url`` when
dictating). A session that reaches ``session.max_age_s`` is reported as ``SessionAged``: the
machine rolls it over between turns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from appliance import machine as m
from appliance.audio.base import AudioFormat, AudioSink
from appliance.config import Config
from appliance.errors import (
    BackendMoved,
    CallRejected,
    ClockSkew,
    ConnectTimeout,
    DeviceRevoked,
    ProvisioningError,
    RealtimeUnreachable,
    SessionError,
)
from appliance.realtime import session_config
from appliance.realtime.keys import KeySource
from appliance.realtime.live import LiveRelay, LiveSession
from appliance.realtime.media import MicTrack
from appliance.realtime.tools import ToolRegistry
from appliance.realtime.webrtc import RealtimeSession
from appliance.tasks import Spawn
from appliance.telemetry import Stats

log = logging.getLogger(__name__)


class SessionRunner:
    def __init__(
        self,
        config: Config,
        *,
        keys: KeySource,
        tools: ToolRegistry,
        relay: LiveRelay | None,
        sink: AudioSink,
        mic_format: AudioFormat,
        post: Callable[[m.Event], None],
        spawn: Spawn,
        stats: Stats,
    ) -> None:
        self.config = config
        self.keys = keys
        self.tools = tools
        self.relay = relay
        """Opens GPT-Live sessions (the provisioning server); ``None``: Realtime only."""
        self.backend = "realtime"
        """The backend of the next session; the server moves it (``BackendMoved``)."""
        self.sink = sink
        self.mic_format = mic_format
        self.mic = MicTrack(mic_format)
        self.session: RealtimeSession | None = None
        self.history: deque[tuple[str, str]] = deque(maxlen=max(1, config.session.carry_items))
        """Recent (role, transcript) items, carried over into a new session."""
        self.last_turn_at = 0.0
        self._post = post
        self._spawn = spawn
        self._stats = stats
        self._aging: asyncio.TimerHandle | None = None

    def uplink(self) -> MicTrack | None:
        """Where mic frames go now: the session's track while it takes audio."""
        session = self.session
        return self.mic if session is not None and session.accepting_audio else None

    def set_uplink(self, open_: bool) -> None:
        self.mic.uplink_open = open_
        if isinstance(self.session, LiveSession):
            self.session.set_uplink(open_)

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

    async def open(self, resume: bool, moves: int = 0) -> None:
        """Open a session; ``resume``: a conversation was cut off, carry it over."""
        await self.close()
        uplink_open = self.mic.uplink_open
        self.mic = MicTrack(self.mic_format)  # a fresh track: nothing stale goes out
        self.mic.uplink_open = uplink_open
        session = self._new_session()
        self.session = session
        s = self.config.session
        carry = resume or (time.monotonic() - self.last_turn_at < s.carry_over_s)
        try:
            await asyncio.wait_for(session.connect(), s.connect_s)
        except (TimeoutError, ConnectTimeout):
            reason = f"timed out: no session within {s.connect_s:g} s"
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
            await self.open(resume, moves + 1)
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
                self._stats.last_error = ""
                if carry and self.history:
                    log.info("carrying %d conversation items over", len(self.history))
                    session.seed(list(self.history))
                loop = asyncio.get_running_loop()
                self._aging = loop.call_later(s.max_age_s, self._aged, session)
                self._post(m.SessionUp())

    def _aged(self, session: RealtimeSession) -> None:
        if session is self.session:
            age = time.monotonic() - session.opened_at
            log.info("rolling the session over after %.0f s (before the service's cap)", age)
            self._post(m.SessionAged())

    async def _fail(self, session: RealtimeSession, event: m.SessionFailed) -> None:
        log.warning("could not open a session: %s", event.reason)
        self._stats.last_error = event.reason
        if self.session is session:
            self.session = None
        await session.close()
        self._post(event)

    def _from_session(self, session: RealtimeSession, event: m.Event) -> None:
        if session is not self.session:
            return  # a stale session's last words
        if isinstance(event, m.SessionLost):
            self._stats.last_error = event.reason
            self._forget()
            self.sink.flush()  # whatever was queued belongs to a conversation that broke off
            if session.partial_reply:  # carry over what the user heard of the broken reply
                self.history.append(("assistant", session.partial_reply + " …"))
            self._spawn(session.close(), "close-lost-session")
        self._post(event)

    def _transcript(self, role: str, text: str) -> None:
        self._stats.transcripts.append((role, text))
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

    def _forget(self) -> None:
        self.session = None
        if self._aging is not None:
            self._aging.cancel()
            self._aging = None

    async def close(self) -> None:
        session = self.session
        self._forget()
        if session is not None:
            await session.close()

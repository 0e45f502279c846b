"""One call to the stand-in: its transport and its life, and the parts it is made of.

The parts each have one job: ``wire`` (events out and in), ``conversation`` (the session and
its items), ``turns`` (input audio and turn detection) and ``responder`` (responses and the
model's voice). Everything the stand-in sends is also kept in ``Call.sent`` (and everything
received in ``Call.received``) so tests can validate the wire.

Transports: a WebRTC call (``answer``) carries events on the ``oai-events`` data channel and
audio on RTP; a WebSocket session (``media="websocket"``, ``start``) carries both as events
through an *outlet*. More outlets may ``attach`` (the sideband, ``?call_id=``); each receives
every server event, and client events from any of them go through ``receive``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from appliance_common.ice import PeerConnection
from appliance_common.opus import ask_for_opus_fec
from standin import events as ev
from standin.conversation import Conversation, Item
from standin.media import (
    DeltaAudio,
    ReplyAudio,
    ReplyTrack,
    answer_codecs,
    sending_codec,
)
from standin.peer import answer_offer, listen
from standin.responder import Responder
from standin.script import Script
from standin.tasks import Tasks
from standin.turns import Turns
from standin.wire import Outlet, Wire

if TYPE_CHECKING:
    from standin.server import Faults
    from standin.voice import Voice

log = logging.getLogger(__name__)
JSON = dict[str, Any]


class Call:
    """The stand-in side of one ``/v1/realtime/calls`` call: it owns the transport and the
    call's life (answer, expiry, close) and wires its parts together: ``wire`` (events in and
    out), ``conversation`` (session and items), ``turns`` (input audio and turn detection)
    and ``responder`` (responses and the model's voice)."""

    def __init__(
        self,
        call_id: str,
        session: JSON,
        *,
        voice: Voice,
        script: Script,
        faults: Faults,
        max_session_s: float,
        on_closed: Callable[[Call], None],
        media: Literal["webrtc", "websocket"] = "webrtc",
    ) -> None:
        self.id = call_id
        self.voice = voice
        self.script = script
        self.faults = faults
        self.max_session_s = max_session_s
        self._on_closed = on_closed
        self.pc: PeerConnection | None = None
        self.closed = asyncio.Event()
        self.started = time.monotonic()
        self._tasks = Tasks()
        self._spawn = self._tasks.spawn
        self._expiry_handle: asyncio.TimerHandle | None = None
        self.wire = Wire(call_id, faults)
        self.conversation = Conversation(session, self.wire, self._turn_detection_changed)
        self.track: ReplyAudio = (
            DeltaAudio(self.wire.send, lambda: self.conversation.audio_format("output"))
            if media == "websocket"
            else ReplyTrack()
        )
        self.responder = Responder(
            self.wire,
            self.conversation,
            self.track,
            voice=voice,
            script=script,
            faults=faults,
            spawn=self._spawn,
            drop=self.close,
            on_idle=self._responded,
        )
        self.turns = Turns(self.wire, self.conversation, script, self.responder)
        self.wire.handlers = {
            **self.conversation.handlers(),
            **self.turns.handlers(),
            **self.responder.handlers(),
        }

    # ------------------------------------------------------------------ what tests read

    @property
    def sent(self) -> list[JSON]:
        """Every server event sent, in order (the wire's list)."""
        return self.wire.sent

    @sent.setter
    def sent(self, events: list[JSON]) -> None:  # a test may swap in a list it can wait on
        self.wire.sent = events

    @property
    def received(self) -> list[JSON]:
        """Every client event received that parsed as a JSON object, in order."""
        return self.wire.received

    @received.setter
    def received(self, events: list[JSON]) -> None:
        self.wire.received = events

    @property
    def session(self) -> JSON:
        return self.conversation.session

    @property
    def items(self) -> list[Item]:
        return self.conversation.items

    @property
    def turn_detection(self) -> JSON | None:
        return self.conversation.turn_detection

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        """Open a session without a peer connection (WebSocket): ``session.created`` goes to
        the outlets attached so far."""
        self.wire.send(ev.event("session.created", session=self.session))
        self._arm_expiry()

    def attach(self, outlet: Outlet) -> None:
        """Send every later server event to ``outlet`` too."""
        self.wire.attach(outlet)

    def detach(self, outlet: Outlet) -> None:
        self.wire.detach(outlet)

    def receive(self, message: str | bytes) -> None:
        """A client event from an outlet's transport (a WebSocket text frame)."""
        self.wire.receive(message)

    def _arm_expiry(self) -> None:
        loop = asyncio.get_running_loop()
        self._expiry_handle = loop.call_later(self.max_session_s, self._expire)

    async def answer(self, offer_sdp: str) -> str:
        """Set the remote offer and return the SDP answer. ``ValueError`` on bad SDP."""
        assert isinstance(self.track, ReplyTrack), "a WebSocket session has no peer connection"
        self.pc = PeerConnection()
        answer = await answer_offer(
            self.pc,
            f"call {self.id}",
            offer_sdp,
            self.track,
            on_channel=self._on_channel,
            on_audio=self._on_audio,
            on_lost=self.close,
            codecs=answer_codecs(),  # the service's codecs, Opus first
        )
        self._arm_expiry()
        answer = ask_for_opus_fec(answer)  # as the service's answer
        self.track.opus = sending_codec(answer) == "opus"
        return answer

    def _on_channel(self, channel: Any) -> None:
        if channel.label != "oai-events":
            log.warning("call %s: ignoring data channel %r", self.id, channel.label)
            return
        self.wire.bind(channel)
        self.wire.send(ev.event("session.created", session=self.session))

    def _on_audio(self, track: Any) -> None:
        self._spawn(listen(track, self.turns.hear))

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.wire.shut()
        self.turns.close()
        if self._expiry_handle:
            self._expiry_handle.cancel()
        self._tasks.cancel(keep=asyncio.current_task())
        if self.pc is not None:
            await self.pc.close()
        self._on_closed(self)
        log.info("call %s closed", self.id)

    def _expire(self) -> None:
        minutes = self.max_session_s / 60
        self.wire.error(
            f"Your session hit the maximum duration of {minutes:g} minutes.", "session_expired"
        )
        self._spawn(self._close_soon())

    async def _close_soon(self) -> None:
        await asyncio.sleep(0.2)  # let the error event leave before the transport closes
        await self.close()

    # ------------------------------------------------------------------ between the parts

    def _turn_detection_changed(self) -> None:
        self.turns.restart()

    def _responded(self) -> None:
        self.turns.arm_idle_timeout()

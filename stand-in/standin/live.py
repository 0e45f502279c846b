"""The stand-in's GPT-Live face: ``POST /v1/live/sessions`` (WebRTC) and one ``LiveSession``.

The contract is the ``openai`` package's ``openai.types.live`` (3.63): the create body is
``LiveCreateParams`` (``{"session": MediaSessionConfigParam, "transport": {"type": "webrtc",
"sdp"}}``, project key), the answer is ``LiveCreateResponse`` (``{"session": {"id"},
"transport": {"type": "webrtc", "sdp"}}``). On the data channel the session sends
``session.started`` first, then the model's own turn-taking: ``session.input_transcript.delta``
while the user talks, ``session.delegation.created`` when it hands work off, a nested
``response.event`` (a Responses ``function_call``) for a function tool of Responses delegation,
``session.output_transcript.delta`` in step with its voice on the RTP track, and
``session.usage.updated`` (active and paused seconds) after each turn. Every event it sends
validates against ``openai.types.live.ServerEvent`` (tests/standin/test_live.py).

What the model says comes from the same ``Script`` as the Realtime stand-in. Turn-taking is a
WebRTC VAD (the model decides when the user is done: 500 ms of silence, or an input mute).
Standby: with ``wake_policy: {type: "speech"}`` and ``idle_timeout_s`` the session pauses
inference after that much inactivity; paused time is billed as ``paused_seconds``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import webrtcvad
from fastapi import FastAPI, Request
from fastapi.responses import Response

from appliance_common.ice import PeerConnection
from appliance_common.pcm import Pcm
from standin.errors import StandinError
from standin.events import event, new_id
from standin.media import RATE, ReplyTrack, stream_speech
from standin.peer import VAD_RATE, VadFrames, answer_offer, listen
from standin.script import Script
from standin.tasks import Tasks
from standin.wire import Handler, Wire

if TYPE_CHECKING:
    from standin.server import Faults, StandIn
    from standin.voice import Voice

log = logging.getLogger(__name__)
JSON = dict[str, Any]
END_OF_TURN_MS = 500
"""Silence after which the stand-in "model" decides the user has finished."""
SESSION_KEYS = {
    "model",
    "audio",
    "client",
    "delegation",
    "idle_timeout_s",
    "input",
    "instructions",
    "safety_identifier",
    "store",
    "triggers",
    "wake_policy",
}
"""``MediaSessionConfigParam``'s fields: the service rejects any other (strict config)."""
DELEGATION_TYPES = {"client", "responses", "decisions"}
MODELS = {"gpt-live-1", "gpt-live-1.1"}


class LiveConfigError(StandinError, ValueError):
    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def check_session(session: Any) -> JSON:
    """The ``session`` of a create request, checked as strictly as the service does."""
    if not isinstance(session, dict):
        raise LiveConfigError("'session' must be an object.", "session", "invalid_type")
    for key in session:
        if key not in SESSION_KEYS:
            raise LiveConfigError(
                f"Unknown parameter: 'session.{key}'.", f"session.{key}", "unknown_parameter"
            )
    model = session.get("model")
    if not isinstance(model, str) or not model:
        raise LiveConfigError(
            "Missing required parameter: 'session.model'.",
            "session.model",
            "missing_required_parameter",
        )
    if model not in MODELS:
        raise LiveConfigError(f"Unknown Live model '{model}'.", "session.model", "model_not_found")
    delegation = session.get("delegation")
    if delegation is not None and (
        not isinstance(delegation, dict) or delegation.get("type") not in DELEGATION_TYPES
    ):
        raise LiveConfigError(
            "Invalid 'session.delegation.type'.", "session.delegation.type", "invalid_value"
        )
    idle = session.get("idle_timeout_s")
    if idle is not None and (not isinstance(idle, int) or isinstance(idle, bool) or idle < 1):
        raise LiveConfigError(
            "'session.idle_timeout_s' must be a positive integer.", "session.idle_timeout_s"
        )
    return session


def function_tools(session: JSON) -> dict[str, JSON]:
    """Function tools of Responses delegation, by name (the stand-in's model may call them)."""
    delegation = session.get("delegation") or {}
    if delegation.get("type") != "responses":
        return {}
    tools = (delegation.get("responses") or {}).get("tools") or []
    return {str(t["name"]): t for t in tools if isinstance(t, dict) and t.get("type") == "function"}


class LiveWire(Wire):
    """A Live session's wire: Live's ``error`` shape, and the data channel's permissions
    (``client.data_channel.allowed_client_events`` of ``config``)."""

    def __init__(self, session_id: str, faults: Faults, config: JSON) -> None:
        super().__init__(session_id, faults, label="live", level=logging.DEBUG)
        self.config = config

    def allowed(self) -> list[str] | None:
        """The client events this session takes (``None``: all)."""
        allowed = ((self.config.get("client") or {}).get("data_channel") or {}).get(
            "allowed_client_events"
        )
        return None if allowed in (None, "all") else [str(k) for k in allowed]

    def error_event(self, message: str, code: str, event_id: str | None, param: str | None) -> JSON:
        error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "client_event_id": event_id,
            **({} if param is None else {"param": param}),
        }
        return event("error", error=error, client_event_id=event_id)

    def admits(self, kind: str, event_id: str | None) -> bool:
        allowed = self.allowed()
        if allowed is None or kind in allowed:
            return True
        self.error(f"'{kind}' is not allowed on this data channel.", "event_not_allowed", event_id)
        return False

    def unknown(self, kind: str, event_id: str | None) -> None:
        self.error(f"Unknown client event '{kind}'.", "unknown_event", event_id, param="type")


class LiveSession:
    """The stand-in side of one Live WebRTC session."""

    def __init__(
        self,
        session_id: str,
        config: JSON,
        *,
        voice: Voice,
        script: Script,
        faults: Faults,
        max_session_s: float,
        on_closed: Callable[[LiveSession], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.id = session_id
        self.config = config
        self.voice = voice
        self.script = script
        self.faults = faults
        self.max_session_s = max_session_s
        self._on_closed = on_closed
        self.created_at = clock()
        self.pc = PeerConnection()
        self.track = ReplyTrack()
        self.wire = LiveWire(session_id, faults, config)
        self.wire.handlers = self._handlers()
        self.closed = asyncio.Event()
        self.channel_label = ""
        self._vad = webrtcvad.Vad(2)
        self._frames = VadFrames()
        self._tasks = Tasks()
        self._spawn = self._tasks.spawn
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None
        self._started = time.monotonic()
        self.muted = False
        self._speaking = False
        self._speech_run = 0
        self._silence_ms = 0
        self._turn = 0
        self._turn_start_ms = 0
        self._reply: asyncio.Task[None] | None = None
        self._tool_waits: dict[str, asyncio.Future[str]] = {}
        """Responses function calls awaiting their ``function_call_output``, by call id."""
        self._outputs_ready = asyncio.Event()
        self._commentary: dict[str, asyncio.Future[str]] = {}
        """Client delegations awaiting the application's ``session.commentary.append``."""
        self.delegations: list[JSON] = []
        # billing: active vs paused (standby) inference
        self.paused = False
        self.paused_s = 0.0
        self._paused_at = 0.0
        self._last_activity = time.monotonic()
        self._idle_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ set-up

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
    def now_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def resource(self) -> JSON:
        """``SessionResource``: the resolved config and the server's metadata."""
        c = self.config
        out: JSON = {
            "id": self.id,
            "expires_at": int(self.created_at + self.max_session_s),
            "model": c["model"],
            "status": "active",
            "audio": {"output": {"voice": (c.get("audio") or {}).get("output", {}).get("voice")}},
            "delegation": c.get("delegation"),
            "instructions": c.get("instructions") or "",
            "store": bool(c.get("store", False)),
        }
        if out["audio"]["output"]["voice"] is None:
            out["audio"]["output"]["voice"] = "marin"
        for key in ("client", "input", "safety_identifier", "triggers"):
            if key in c:
                out[key] = c[key]
        return out

    async def answer(self, offer_sdp: str) -> str:
        """Set the remote offer and return the SDP answer. ``ValueError`` on a bad offer."""
        answer = await answer_offer(
            self.pc,
            f"live session {self.id}",
            offer_sdp,
            self.track,
            on_channel=self._on_channel,
            on_audio=lambda track: self._spawn(listen(track, self._hear)),
            on_lost=lambda: self.close("connection_lost"),
        )
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(self.max_session_s, self._expire)
        return answer

    def _on_channel(self, channel: Any) -> None:
        self.channel_label = str(channel.label)
        self.wire.bind(channel)
        self._send(event("session.started", session=self.resource()))
        allowed = self.wire.allowed()
        if allowed is not None:
            self._send(
                event(
                    "info",
                    code="data_channel_permissions",
                    message="This data channel may send: " + (", ".join(allowed) or "nothing"),
                )
            )
        self._last_activity = time.monotonic()
        self._idle_task = self._spawn(self._watch_idle())

    def usage(self) -> JSON:
        paused = self.paused_s + (time.monotonic() - self._paused_at if self.paused else 0.0)
        total = time.monotonic() - self._started
        return {
            "seconds": float(int(total)),
            "active_seconds": int(total) - int(paused),
            "paused_seconds": int(paused),
        }

    async def close(self, reason: str = "close_requested") -> None:
        """Close once (``reason`` of the first call wins); every caller returns when the peer
        connection is closed, so a stand-in that stops never leaves one open."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason))
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        self._send(
            event("session.closed", reason=reason, session=self.resource(), usage=self.usage())
        )
        self.closed.set()
        self.wire.shut()
        if self._expiry:
            self._expiry.cancel()
        self._tasks.cancel()  # a task that asked for the close waits on it shielded
        await asyncio.sleep(0.05)  # let session.closed leave before the transport goes
        await self.pc.close()
        self._on_closed(self)
        log.info("live session %s closed (%s)", self.id, reason)

    def _expire(self) -> None:
        self._spawn(self.close("expired"))

    # ------------------------------------------------------------------ wire

    def _send(self, data: JSON) -> None:
        self.wire.send(data)

    def _error(self, message: str, code: str, client_event_id: str | None) -> None:
        self.wire.error(message, code, client_event_id)

    def _handlers(self) -> dict[str, Handler]:
        return {
            "session.input_audio.mute": self._mute,
            "session.input_audio.unmute": self._unmute,
            "session.commentary.append": self._commentary_append,
            "session.thinking.append": self._thinking_append,
            "session.instructions.append": self._instructions_append,
            "session.update": self._session_update,
            "response.item.create": self._item_create,
            "response.create": self._response_create,
            "session.close": self._close_event,
        }

    # ------------------------------------------------------------------ client events

    def _mute(self, data: JSON, event_id: str | None) -> None:
        self.muted = True
        self._send(event("session.input_audio.muted", client_event_id=event_id))
        if self._speaking:  # the input ends here: the model takes its turn
            self._end_of_user_turn()

    def _unmute(self, data: JSON, event_id: str | None) -> None:
        self.muted = False
        self._send(event("session.input_audio.unmuted", client_event_id=event_id))

    def _timeline(self, kind: str, event_id: str | None) -> None:
        now = self.now_ms
        self._send(event(kind, start_ms=now, end_ms=now, client_event_id=event_id))

    def _delegation_id(self, data: JSON) -> str | None:
        if "delegation_id" not in data:
            raise KeyError("delegation_id (required, nullable)")
        value = data["delegation_id"]
        if value is not None and not isinstance(value, str):
            raise TypeError("delegation_id must be a string or null")
        if not isinstance(data.get("content"), str):
            raise TypeError("content must be a string")
        return value

    def _commentary_append(self, data: JSON, event_id: str | None) -> None:
        delegation = self._delegation_id(data)
        self._timeline("session.commentary.appended", event_id)
        waiting = self._commentary.pop(delegation or "", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(str(data["content"]))
        elif delegation is None and not self._speaking and not self._busy():
            # general context for the user: the stand-in's "model" says it at once
            self._reply = self._spawn(self._say(_speakable(str(data["content"]))))

    def _thinking_append(self, data: JSON, event_id: str | None) -> None:
        self._delegation_id(data)
        self._timeline("session.thinking.appended", event_id)

    def _instructions_append(self, data: JSON, event_id: str | None) -> None:
        self._delegation_id(data)
        self._timeline("session.instructions.appended", event_id)

    def _session_update(self, data: JSON, event_id: str | None) -> None:
        update = data["session"]
        if not isinstance(update, dict):
            raise TypeError("session must be an object")
        unknown = set(update) - {"delegation", "triggers"}
        if unknown:
            self._error(
                f"Unknown parameter: 'session.{sorted(unknown)[0]}' (immutable or unknown).",
                "unknown_parameter",
                event_id,
            )
            return
        current = self.config.get("delegation") or {"type": "client"}
        wanted = update.get("delegation")
        if wanted is not None and wanted.get("type") != current.get("type"):
            self._error("The delegation type cannot change.", "invalid_value", event_id)
            return
        if "triggers" in update:
            self.config["triggers"] = update["triggers"]
        self._send(event("session.updated", session=self.resource(), client_event_id=event_id))

    def _item_create(self, data: JSON, event_id: str | None) -> None:
        if (self.config.get("delegation") or {}).get("type") != "responses":
            self._error(
                "response.item.create requires Responses delegation.", "invalid_value", event_id
            )
            return
        item = data["item"]
        if item.get("type") == "function_call_output":
            waiting = self._tool_waits.get(str(item["call_id"]))
            if waiting is not None and not waiting.done():
                waiting.set_result(str(item["output"]))

    def _response_create(self, data: JSON, event_id: str | None) -> None:
        if (self.config.get("delegation") or {}).get("type") != "responses":
            self._error("response.create requires Responses delegation.", "invalid_value", event_id)
            return
        self._outputs_ready.set()

    def _close_event(self, data: JSON, event_id: str | None) -> None:
        self._spawn(self.close("close_requested"))

    # ------------------------------------------------------------------ listening

    def _hear(self, samples: Pcm) -> None:
        for chunk in self._frames.push(samples):
            self._on_vad(not self.muted and self._vad.is_speech(chunk, VAD_RATE))

    def _on_vad(self, speech: bool) -> None:
        if not self._speaking:
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= 3:
                self._user_started()
            return
        self._silence_ms = 0 if speech else self._silence_ms + 20
        if self._silence_ms >= END_OF_TURN_MS:
            self._end_of_user_turn()

    def _user_started(self) -> None:
        self._speaking = True
        self._silence_ms = 0
        self._activity()
        if self._reply is not None and not self._reply.done():  # full duplex: it yields
            self._reply.cancel()
            self.track.clear()
        self._turn += 1
        self._turn_start_ms = max(0, self.now_ms - 60)
        words = self.script.transcript(self._turn).split()
        if words:  # what it has heard so far
            now = self.now_ms
            self._send(
                event(
                    "session.input_transcript.delta",
                    delta=words[0],
                    start_ms=self._turn_start_ms,
                    end_ms=now,
                )
            )

    def _end_of_user_turn(self) -> None:
        self._speaking = False
        self._speech_run = 0
        self._activity()
        text = self.script.transcript(self._turn)
        words = text.split()
        now = self.now_ms
        for word in words[1:]:
            self._send(
                event(
                    "session.input_transcript.delta",
                    delta=" " + word,
                    start_ms=self._turn_start_ms,
                    end_ms=now,
                )
            )
        self._reply = self._spawn(self._take_turn(self._turn, text))

    # ------------------------------------------------------------------ the model's turn

    def _busy(self) -> bool:
        return self._reply is not None and not self._reply.done()

    async def _say(self, text: str) -> None:
        await self._speak(text)
        self._send(event("session.usage.updated", usage=self.usage()))

    async def _take_turn(self, turn: int, text: str) -> None:
        delegation = (self.config.get("delegation") or {}).get("type", "client")
        tools = set(function_tools(self.config))
        if delegation == "client":  # the application's own work: anything the script delegates
            tools = {rule.call for rule in self.script.rules if rule.call is not None}
        decision = self.script.decide(turn, text, tools, audio=True)
        if decision.call is not None and delegation == "responses":
            output = await self._delegate_to_responses(decision.call, decision.arguments or "{}")
            await self._speak(self.script.after_tool(decision.then_say or "{output}", output))
        elif decision.call is not None:
            # client delegation: the application answers with commentary for this delegation
            await self._speak(await self._delegate_to_client())
        else:
            await self._speak(decision.say or "Okay.")
        self._send(event("session.usage.updated", usage=self.usage()))

    def _delegation(self, target: str, response_id: str | None = None) -> str:
        delegation: JSON = {"id": new_id("dlg"), "target": target, "type": "delegation"}
        if response_id is not None:
            delegation["response_id"] = response_id
        self.delegations.append(delegation)
        self._send(
            event("session.delegation.created", delegation=delegation, offset_ms=self.now_ms)
        )
        return str(delegation["id"])

    async def _delegate_to_client(self) -> str:
        delegation_id = self._delegation("client")
        waiting: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._commentary[delegation_id] = waiting
        return await waiting

    async def _delegate_to_responses(self, name: str, arguments: str) -> str:
        response_id = new_id("resp")
        delegation_id = self._delegation("responses", response_id)
        call_id = new_id("call")
        item = {
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": "completed",
        }
        self._outputs_ready.clear()
        waiting: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tool_waits[call_id] = waiting
        nested: list[JSON] = [
            {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": {"id": response_id, "status": "completed"}},
        ]
        for seq, inner in enumerate(nested):
            self._send(
                event(
                    "response.event",
                    event={**inner, "sequence_number": seq},
                    delegation_id=delegation_id,
                )
            )
        output = await waiting
        await self._outputs_ready.wait()  # the application's response.create continues it
        self._tool_waits.pop(call_id, None)
        return output

    async def _speak(self, text: str) -> None:
        voice = str(self.resource()["audio"]["output"]["voice"])
        samples = await asyncio.to_thread(self.voice.speak, text, voice, 1.0)
        self._activity()
        words = text.split()
        start = self.now_ms

        def said(delta: str, samples_queued: int) -> None:
            end_ms = start + int(samples_queued * 1000 / RATE)
            kind = "session.output_transcript.delta"
            self._send(event(kind, delta=delta, start_ms=start, end_ms=end_ms))

        await stream_speech(self.track, samples, words, said, self.faults, self._drop_now)
        self._activity()

    def _drop_now(self) -> None:
        log.warning("live %s: fault switch drops the peer connection mid-reply", self.id)
        self._spawn(self.close("connection_lost"))

    # ------------------------------------------------------------------ standby

    def _activity(self) -> None:
        self._last_activity = time.monotonic()
        if self.paused:
            self.paused = False
            self.paused_s += time.monotonic() - self._paused_at
            log.info("live %s: inference resumed (speech woke it)", self.id)

    async def _watch_idle(self) -> None:
        """With a speech wake policy and ``idle_timeout_s``, pause inference when idle."""
        idle_s = self.config.get("idle_timeout_s")
        wake = (self.config.get("wake_policy") or {}).get("type") == "speech"
        if not (idle_s and wake):
            return
        while not self.closed.is_set():
            await asyncio.sleep(0.1)
            busy = self._speaking or (self._reply is not None and not self._reply.done())
            if busy:
                self._last_activity = time.monotonic()
            elif not self.paused and time.monotonic() - self._last_activity >= idle_s:
                self.paused = True
                self._paused_at = time.monotonic()
                log.info("live %s: inference paused after %d s idle (standby)", self.id, idle_s)
                self._send(event("session.usage.updated", usage=self.usage()))


def create_reply(session: LiveSession, answer: str) -> JSON:
    """``LiveCreateResponse``."""
    return {"session": {"id": session.id}, "transport": {"type": "webrtc", "sdp": answer}}


class LiveSessions:
    """The stand-in's Live sessions: open ones by id, and those that have closed."""

    def __init__(self) -> None:
        self.open: dict[str, LiveSession] = {}
        self.finished: list[LiveSession] = []

    def closed(self, session: LiveSession) -> None:
        if self.open.pop(session.id, None) is not None:
            self.finished.append(session)

    async def close_all(self) -> None:
        for session in list(self.open.values()):
            await session.close()


def install(app: FastAPI, standin: StandIn) -> None:
    """Serve ``POST /v1/live/sessions`` on the stand-in's app (project key, JSON body)."""
    from standin.server import fault_response, openai_error

    bad_key = "Incorrect API key provided."

    async def create(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), standin.config.api_key.encode()
        ):
            return openai_error(401, bad_key, code="invalid_api_key").response()
        if standin.faults.calls_status:
            return fault_response(standin.faults.calls_status).response()
        try:
            body = await request.json()
        except ValueError:
            return openai_error(
                400, "We could not parse the JSON body.", code="invalid_json"
            ).response()
        try:
            if not isinstance(body, dict):
                raise LiveConfigError("The body must be a JSON object.", "body", "invalid_type")
            unknown = set(body) - {"session", "transport"}
            if unknown:
                key = sorted(unknown)[0]
                raise LiveConfigError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
            transport = body.get("transport")
            if not isinstance(transport, dict) or transport.get("type") != "webrtc":
                raise LiveConfigError(
                    "'transport.type' must be 'webrtc'.", "transport.type", "invalid_value"
                )
            sdp = transport.get("sdp")
            if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
                raise LiveConfigError("Invalid SDP offer.", "transport.sdp", "invalid_offer")
            config = check_session(body.get("session"))
        except LiveConfigError as exc:
            return openai_error(400, str(exc), code=exc.code, param=exc.param).response()
        session = LiveSession(
            new_id("live"),
            json.loads(json.dumps(config)),
            voice=standin.voice,
            script=standin.script,
            faults=standin.faults,
            max_session_s=standin.config.max_session_s,
            on_closed=standin.live.closed,
            clock=standin.clock,
        )
        standin.live.open[session.id] = session  # from here on, stopping closes it
        try:
            answer = await session.answer(sdp)
        except ValueError as exc:
            standin.live.open.pop(session.id, None)
            return openai_error(
                400, str(exc), code="invalid_offer", param="transport.sdp"
            ).response()
        log.info("live session %s created (%s)", session.id, config["model"])
        return Response(
            json.dumps(create_reply(session, answer)), 200, media_type="application/json"
        )

    app.post("/v1/live/sessions")(create)


def _speakable(content: str) -> str:
    """What the stand-in says for commentary: a "Say: …" instruction's text, else the content."""
    match = re.match(r"(?is)^\s*say[:\s]+(.*)$", content)
    return match.group(1).strip() if match else content

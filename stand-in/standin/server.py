"""HTTP face of the stand-in: ``client_secrets``, ``calls`` (SDP and multipart), ``hangup``,
and the WebSocket ``/v1/realtime`` (``?model=``: a session; ``?call_id=``: the sideband).

``StandIn`` serves it with uvicorn on the running event loop, so tests and the demo embed it
as an async context manager. Errors are OpenAI-shaped: ``{"error": {message, type, code, param}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from pydantic_core import from_json, to_json
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Scope

from appliance_common.ice import allow_loopback
from appliance_common.models import DEFAULT_MODEL, SHUTDOWN_DATES
from appliance_common.serving import FastPath, Reply, Served, header
from standin import events as ev
from standin import live
from standin.call import Call
from standin.conversation import SessionUpdateError, apply_session_update
from standin.script import Script
from standin.voice import Voice

log = logging.getLogger(__name__)
JSON = dict[str, Any]
KEEP_KEYS = 10_000
"""Minted keys are remembered (for calls and tests); past this many, those expired for more
than 10 minutes are dropped."""


@dataclass(frozen=True, slots=True)
class StandInConfig:
    """Settings of the stand-in. Defaults match the real service where it matters."""

    api_key: str = "sk-standin-local"
    """The standard API key the stand-in accepts (a made-up secret; never a real key)."""
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port; read it back from ``StandIn.base_url``."""
    max_session_s: float = 3600.0
    """Maximum session duration (GA: 60 min). Shorten it to test ``session_expired``."""
    script: Path | None = None
    """Rule file deciding what the model says (default: the shipped ``script.toml``)."""
    tts: str = "auto"
    """``auto`` (espeak-ng when installed), ``espeak`` or ``assets``."""
    allow_loopback: bool = True
    """Offer 127.0.0.1 ICE candidates (needed when everything runs on one host)."""
    default_model: str = DEFAULT_MODEL


@dataclass
class Faults:
    """Fault switches for tests; change them while the stand-in runs."""

    calls_status: int | None = None
    """Answer ``/v1/realtime/calls`` with this HTTP status (e.g. 429, 500)."""
    client_secrets_status: int | None = None
    """Answer ``/v1/realtime/client_secrets`` with this HTTP status."""
    drop_after_audio_ms: int | None = None
    """Close the peer connection after this much reply audio."""
    stall_events: bool = False
    """Stop sending data-channel events (a half-dead session)."""


_Key = tuple[float, bytes]
"""A minted key: when it expires, and its session as JSON. A plain tuple of a number and bytes,
which the garbage collector stops tracking: tens of thousands of keys as objects (first nested
dicts, then a dataclass with a list) made its full passes long, a stall that showed as the mint
benchmark's p99 (docs/server.md, "What kept the tail long")."""


def openai_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    kind: str = "invalid_request_error",
) -> Reply:
    """The real service's error shape: ``{"error": {message, type, code, param}}``."""
    error = {"message": message, "type": kind, "code": code, "param": param}
    return Reply(status, to_json({"error": error}))


STATUS_ERRORS = {
    429: ("rate_limit_exceeded", "requests", "Rate limit reached. Please try again later."),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    503: (
        "server_error",
        "server_error",
        "The engine is currently overloaded, please try again later.",
    ),
}


def replies(
    handler: Callable[[Request], Awaitable[Reply]],
) -> Callable[[Request], Awaitable[Response]]:
    """A framework route from a handler that returns a ``Reply``."""

    async def endpoint(request: Request) -> Response:
        return (await handler(request)).response()

    endpoint.__name__ = handler.__name__
    return endpoint


def fault_response(status: int) -> Reply:
    kind, code, message = STATUS_ERRORS.get(status, ("server_error", "server_error", "Error."))
    reply = openai_error(status, message, code=code, kind=kind)
    if status == 429:
        return Reply(reply.status, reply.body, ((b"retry-after", b"1"),))
    return reply


class StandIn:
    """The local stand-in for the OpenAI Realtime service."""

    def __init__(
        self, config: StandInConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or StandInConfig()
        self.clock = clock
        self.faults = Faults()
        self.calls: dict[str, Call] = {}
        self.finished_calls: list[Call] = []
        self.keys: dict[str, _Key] = {}
        self.models: dict[str, str | None] = {
            m: None if d is None else d.isoformat() for m, d in SHUTDOWN_DATES.items()
        }
        """What ``GET /v1/models`` lists: model id → ``shutdown_date`` (change it in tests)."""
        self._prune_at = KEEP_KEYS
        self._sessions: dict[bytes, bytes] = {}
        """Minted sessions as JSON, by the requested session as JSON."""
        self.voice = Voice(self.config.tts)
        self.script = Script.load(self.config.script)
        self.live = live.LiveSessions()
        """GPT-Live sessions (``POST /v1/live/sessions``, see ``standin.live``)."""
        self.app, self.asgi = self._build_app()
        """The FastAPI app, and what uvicorn serves: the app behind its fast path."""
        self._served = Served(self.asgi, self.config.host, self.config.port)
        if self.config.allow_loopback:
            allow_loopback()

    @property
    def base_url(self) -> str:
        return self._served.base_url

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> StandIn:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._served.start()
        log.info("stand-in listening on %s (tts: %s)", self.base_url, self.voice.engine)

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            await call.close()
        await self._served.stop()
        await self.live.close_all()  # after serving stopped: no session is created after it

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await self._served.wait()
        finally:
            await self.stop()

    # ------------------------------------------------------------------ HTTP

    def _bearer(self, scope: Scope) -> str | None:
        scheme, _, token = header(scope, b"authorization").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _standard_key_ok(self, scope: Scope) -> bool:
        token = self._bearer(scope)
        return token is not None and secrets.compare_digest(token, self.config.api_key)

    def _minted_session(self, requested: Any) -> bytes:
        """The session a ``client_secrets`` request asks for, as JSON; the same request
        (a fleet's profile) is worked out once."""
        wanted = to_json(requested)
        session = self._sessions.get(wanted)
        if session is None:
            if len(self._sessions) >= 256:
                self._sessions.clear()
            session = self._sessions[wanted] = to_json(self._new_session(requested))
        return session

    def _new_session(self, requested: Any) -> JSON:
        """The session a request's ``session`` asks for (``SessionUpdateError`` if invalid)."""
        if not isinstance(requested, dict):  # a missing type: the service's word for it
            requested = {}
        if requested.get("type") == "transcription":
            base = ev.default_transcription_session()
        else:
            base = ev.default_session(str(requested.get("model") or self.config.default_model))
        return apply_session_update(base, requested, voice_locked=False)

    def _build_app(self) -> tuple[FastAPI, ASGIApp]:
        app = FastAPI(title="Realtime stand-in", docs_url=None, redoc_url=None)
        bad_key = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."

        async def client_secrets(scope: Scope, payload: bytes) -> Reply:
            if not self._standard_key_ok(scope):
                return openai_error(401, bad_key, code="invalid_api_key")
            if self.faults.client_secrets_status:
                return fault_response(self.faults.client_secrets_status)
            try:
                body = from_json(payload or b"{}")
            except ValueError:
                return openai_error(
                    400, "We could not parse the JSON body of your request.", code="invalid_json"
                )
            if not isinstance(body, dict):
                return openai_error(400, "The request body must be a JSON object.")
            seconds = 600
            expires_after = body.get("expires_after")
            if expires_after is not None:
                if not isinstance(expires_after, dict):
                    return openai_error(
                        400,
                        "Invalid type for 'expires_after'.",
                        code="invalid_type",
                        param="expires_after",
                    )
                if expires_after.get("anchor", "created_at") != "created_at":
                    return openai_error(
                        400,
                        "Invalid value for 'expires_after.anchor'.",
                        code="invalid_value",
                        param="expires_after.anchor",
                    )
                raw = expires_after.get("seconds", 600)
                if not isinstance(raw, int) or isinstance(raw, bool) or not 10 <= raw <= 7200:
                    return openai_error(
                        400,
                        "Invalid 'expires_after.seconds': must be an integer between 10 and 7200.",
                        code="invalid_value",
                        param="expires_after.seconds",
                    )
                seconds = raw
            requested = body.get("session", {"type": "realtime"})
            try:
                session = self._minted_session(requested)
            except SessionUpdateError as exc:
                return openai_error(400, str(exc), code=exc.code, param=exc.param)
            value = "ek_" + secrets.token_hex(16)
            expires_at = int(self.clock()) + seconds
            if len(self.keys) >= self._prune_at:  # a long run: forget keys long expired
                stale = self.clock() - 600
                self.keys = {k: v for k, v in self.keys.items() if v[0] > stale}
                self._prune_at = max(KEEP_KEYS, 2 * len(self.keys))  # amortised: O(1) a mint
            self.keys[value] = (expires_at, session)
            log.debug("minted ephemeral key (expires in %d s)", seconds)
            # the session is JSON already: the body is written around it
            body = b'{"value":"%s","expires_at":%d,"session":%s}' % (
                value.encode(),
                expires_at,
                session,
            )
            return Reply(200, body)

        app.post("/v1/realtime/client_secrets")(FastPath.endpoint(client_secrets))
        live.install(app, self)
        # uvicorn serves the hot route straight in ASGI (the mint benchmark calls it); CORS in
        # front of everything, as browsers call the service directly (the official WebRTC
        # client reads the call id from ``Location``). A request without ``Origin`` passes
        # through untouched.
        asgi = CORSMiddleware(
            FastPath(app, {("POST", "/v1/realtime/client_secrets"): client_secrets}),
            allow_origins=["*"],
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Location"],
            max_age=600,
        )

        @app.post("/v1/realtime/calls")
        @replies
        async def create_call(request: Request) -> Reply:
            if self.faults.calls_status:
                return fault_response(self.faults.calls_status)
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            token = self._bearer(request.scope)
            if content_type == "application/sdp":
                key = self.keys.get(token or "")
                if key is not None:
                    if key[0] <= self.clock():
                        return openai_error(
                            401, "The ephemeral key has expired.", code="invalid_api_key"
                        )
                    session = json.loads(key[1])
                elif self._standard_key_ok(request.scope):
                    session = self._new_session({"type": "realtime"})
                else:
                    return openai_error(401, bad_key, code="invalid_api_key")
                sdp = (await request.body()).decode("utf-8", "replace")
            elif content_type == "multipart/form-data":
                if not self._standard_key_ok(request.scope):
                    return openai_error(401, bad_key, code="invalid_api_key")
                form = await request.form()
                sdp_part = form.get("sdp")
                if sdp_part is None:
                    return openai_error(
                        400,
                        "Missing required parameter: 'sdp'.",
                        code="missing_required_parameter",
                        param="sdp",
                    )
                sdp = sdp_part if isinstance(sdp_part, str) else (await sdp_part.read()).decode()
                session_part = form.get("session")
                requested: JSON = {"type": "realtime"}
                if session_part is not None:
                    raw = (
                        session_part
                        if isinstance(session_part, str)
                        else (await session_part.read()).decode()
                    )
                    try:
                        requested = json.loads(raw)
                    except ValueError:
                        return openai_error(
                            400, "Invalid JSON in 'session'.", code="invalid_json", param="session"
                        )
                try:
                    session = self._new_session(requested)
                except SessionUpdateError as exc:
                    return openai_error(400, str(exc), code=exc.code, param=exc.param)
            else:
                return openai_error(
                    400,
                    "Unsupported content type: use application/sdp or multipart/form-data.",
                    code="unsupported_content_type",
                )
            if not sdp.lstrip().startswith("v=0"):
                return openai_error(400, "Invalid SDP offer.", code="invalid_offer", param="sdp")
            call = self._new_call(session, "webrtc")
            call_id = call.id
            try:
                answer = await call.answer(sdp)
            except ValueError as exc:
                return openai_error(400, str(exc), code="invalid_offer", param="sdp")
            self.calls[call_id] = call
            log.info("call %s created", call_id)
            location = f"/v1/realtime/calls/{call_id}".encode()
            return Reply(201, answer.encode(), ((b"location", location),), b"application/sdp")

        @app.get("/v1/models")
        @replies
        async def list_models(request: Request) -> Reply:
            """The models list with each model's ``shutdown_date`` (the lifecycle guard's
            refresh reads it)."""
            if not self._standard_key_ok(request.scope):
                return openai_error(401, bad_key, code="invalid_api_key")
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "system", "shutdown_date": d}
                for m, d in self.models.items()
            ]
            return Reply(200, to_json({"object": "list", "data": data}))

        @app.websocket("/v1/realtime")
        async def realtime_socket(websocket: WebSocket) -> None:
            await self._socket(websocket)

        @app.post("/v1/realtime/calls/{call_id}/hangup")
        @replies
        async def hangup(request: Request) -> Reply:
            call_id = str(request.path_params["call_id"])
            if not self._standard_key_ok(request.scope):
                return openai_error(401, bad_key, code="invalid_api_key")
            call = self.calls.get(call_id)
            if call is None:
                return openai_error(
                    404, f"Call '{call_id}' not found.", code="call_id_not_found", param="call_id"
                )
            await call.close()
            return Reply(200, b"")

        return app, asgi

    # ------------------------------------------------------------------ WebSocket

    def _socket_key(self, websocket: WebSocket) -> tuple[str | None, str | None]:
        """The bearer token (header, or a browser's ``openai-insecure-api-key.`` subprotocol)
        and the subprotocol to accept (``realtime`` when the client offered it)."""
        token = self._bearer(websocket.scope)
        offered = [p.strip() for p in header(websocket.scope, b"sec-websocket-protocol").split(",")]
        for protocol in offered:
            if token is None and protocol.startswith("openai-insecure-api-key."):
                token = protocol.removeprefix("openai-insecure-api-key.")
        return token, ("realtime" if "realtime" in offered else None)

    async def _socket(self, websocket: WebSocket) -> None:
        token, subprotocol = self._socket_key(websocket)
        standard = token is not None and secrets.compare_digest(token, self.config.api_key)
        key = self.keys.get(token or "")
        call_id = websocket.query_params.get("call_id")
        bad_key = "Incorrect API key provided."
        if call_id is not None:  # the sideband: the server's standard key only
            if not standard:
                return await self._deny(
                    websocket, openai_error(401, bad_key, code="invalid_api_key")
                )
            call = self.calls.get(call_id)
            if call is None:
                return await self._deny(
                    websocket,
                    openai_error(
                        404,
                        f"Call '{call_id}' not found.",
                        code="call_id_not_found",
                        param="call_id",
                    ),
                )
            await websocket.accept(subprotocol)
            await self._pump(websocket, call, sideband=True)
            return
        if key is not None and key[0] > self.clock():
            session = json.loads(key[1])
        elif standard:
            model = websocket.query_params.get("model") or self.config.default_model
            session = self._new_session({"type": "realtime", "model": model})
        else:
            expired = key is not None
            message = "The ephemeral key has expired." if expired else bad_key
            return await self._deny(websocket, openai_error(401, message, code="invalid_api_key"))
        call = self._new_call(session, "websocket")
        self.calls[call.id] = call
        await websocket.accept(subprotocol)
        log.info("websocket session %s opened", call.id)
        await self._pump(websocket, call, sideband=False)

    def _new_call(self, session: JSON, media: Literal["webrtc", "websocket"]) -> Call:
        return Call(
            ("rtc_" if media == "webrtc" else "ws_") + secrets.token_hex(16),
            session,
            voice=self.voice,
            script=self.script,
            faults=self.faults,
            max_session_s=self.config.max_session_s,
            on_closed=self._call_closed,
            media=media,
        )

    @staticmethod
    async def _deny(websocket: WebSocket, reply: Reply) -> None:
        """Refuse the handshake with an HTTP error, as the service does."""
        await websocket.send_denial_response(reply.response())

    async def _pump(self, websocket: WebSocket, call: Call, *, sideband: bool) -> None:
        """Carry ``call``'s server events to the socket and the socket's client events to the
        call, until either side closes. A WebSocket session carries no ``output_audio_buffer``
        events (those are WebRTC's); the sideband of a WebRTC call gets everything."""
        outbox: asyncio.Queue[JSON | None] = asyncio.Queue()

        def outlet(event: JSON) -> None:
            if sideband or not str(event["type"]).startswith("output_audio_buffer."):
                outbox.put_nowait(event)

        async def writer() -> None:
            while (event := await outbox.get()) is not None:
                await websocket.send_text(json.dumps(event))

        async def closer() -> None:
            await call.closed.wait()
            outbox.put_nowait(None)

        call.attach(outlet)
        if not sideband:
            call.start()
        writing = asyncio.ensure_future(writer())
        closing = asyncio.ensure_future(closer())
        try:
            reading = asyncio.ensure_future(self._read(websocket, call))
            await asyncio.wait({reading, writing}, return_when=asyncio.FIRST_COMPLETED)
            reading.cancel()
        finally:
            call.detach(outlet)
            closing.cancel()
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await writing
            if not sideband:
                await call.close()
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close()

    @staticmethod
    async def _read(websocket: WebSocket, call: Call) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                call.receive(await websocket.receive_text())

    def _call_closed(self, call: Call) -> None:
        if self.calls.pop(call.id, None) is not None:
            self.finished_calls.append(call)

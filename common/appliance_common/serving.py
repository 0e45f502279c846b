"""Serving over HTTP: uvicorn on the running event loop (the demo, tests, embedding), its
listening socket, and a fast path for hot routes that skips the framework."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_BODY = 64 * 1024
"""Largest request body the server reads (device requests are small JSON objects)."""
MAX_ADMIN_BODY = 1024 * 1024
"""Largest body of an admin request (a group's profile holds instructions and tools)."""
MAX_HEADERS = 16 * 1024
"""Largest sum of a request's header names and values (a device's are about 500 bytes)."""
MAX_HEAD = 128 * 1024
"""Largest request head (request line and headers, as sent) the connection buffers."""
REQUEST_TIMEOUT_S = 10.0
"""How long a request, head and body, may take to arrive, from its first byte."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole HTTP response, as a fast-path handler returns it."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    content_type: bytes = b"application/json"

    def response(self) -> Response:
        """The same reply as a Starlette response (for the framework's own route)."""
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in self.headers}
        return Response(
            self.body, self.status, headers=headers, media_type=self.content_type.decode()
        )


Handler = Callable[[Scope, bytes], Awaitable[Reply]]
"""A fast-path route: the request's ASGI scope and its whole body in, the reply out."""

TOO_LARGE = Reply(413, b'{"error":{"code":"request_too_large","message":"request body too large"}}')
"""(The rest of such a body is discarded by uvicorn as it comes, within the request's time.)"""
HEADERS_TOO_LARGE = Reply(
    431, b'{"error":{"code":"headers_too_large","message":"request headers too large"}}'
)


def header(scope: Scope, name: bytes) -> str:
    """The first value of header ``name`` (lower case) in an ASGI scope, or ``""``."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class FastPath:
    """An ASGI app in front of ``app`` that enforces the request limits on every route, and
    answers the hot routes itself, straight in ASGI, ahead of the framework's middlewares,
    routing, dependency solving and request/response objects (what each cost: docs/server.md,
    "How a mint is served"). Declare each handler as a framework route too, through
    ``endpoint``, so the OpenAPI schema (and ``app`` alone) still serve it. Everything else,
    lifespan included, goes to ``app``, with its body already read.

    The limits, on every HTTP request: headers up to ``MAX_HEADERS`` (else 431), a body up
    to ``MAX_BODY`` (or what ``bodies`` allows under a path prefix; else 413, judged from
    ``Content-Length`` before reading when it is given). The time a request takes to arrive
    is bounded by ``BoundedHttp``."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Mapping[tuple[str, str], Handler],
        bodies: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.routes = dict(routes)
        """Handlers by ``(method, path)``."""
        self.bodies = dict({"/v1/admin/": MAX_ADMIN_BODY} if bodies is None else bodies)
        """Largest body by path prefix, where it is not ``MAX_BODY``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        handler = self.routes.get((scope["method"], path))
        limit = MAX_BODY
        if handler is None:
            limit = next((n for p, n in self.bodies.items() if path.startswith(p)), MAX_BODY)
        body = await _read(scope, receive, limit)
        if body is None:  # the client went away
            return
        if isinstance(body, Reply):
            await _send(send, body)
            return
        if handler is not None:
            await _send(send, await handler(scope, body))
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` as a framework endpoint (the route that the schema describes)."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            too_large = len(body) > MAX_BODY
            return (TOO_LARGE if too_large else await handler(request.scope, body)).response()

        endpoint.__name__, endpoint.__doc__ = handler.__name__, handler.__doc__  # for the schema
        return endpoint


async def _read(scope: Scope, receive: Receive, limit: int) -> bytes | Reply | None:
    """A request's whole body, or the reply refusing it, or ``None`` if the client left."""
    size = 0
    length = b""
    for key, value in scope["headers"]:
        size += len(key) + len(value)
        if key == b"content-length":
            length = value
    if size > MAX_HEADERS:
        return HEADERS_TOO_LARGE
    if length and (not length.isdigit() or int(length) > limit):
        return TOO_LARGE
    message = await receive()  # usually the whole body
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body if message["type"] == "http.request" else None
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return TOO_LARGE
    return body


async def _send(send: Send, reply: Reply) -> None:
    if reply.status in (204, 304):  # no body, so no Content-Length (RFC 9110)
        headers = list(reply.headers)
    else:
        length = str(len(reply.body)).encode()
        headers = [(b"content-type", reply.content_type), (b"content-length", length)]
        headers += reply.headers
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if reply.status == 204 else reply.body})


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with each request bounded: its head past ``MAX_HEAD``
    bytes is refused with 431, and a request not complete, body included, within
    ``REQUEST_TIMEOUT_S`` of its first byte with 408 (the parser would otherwise buffer a
    header of any size, and wait for a head or body however slowly it comes). The timer is
    only started for a request that does not arrive whole in one read, so the usual small
    request costs none. Body sizes are bounded by ``FastPath``."""

    _head = 0
    """Bytes of the current request head received so far; -1 once it is complete."""
    _pending = False
    """Whether a request has begun and not yet fully arrived."""
    _timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._head >= 0:
            self._head += len(data)
        self._pending = True  # until the parser says the message is complete
        super().data_received(data)
        if self._head > MAX_HEAD:  # still no end of the headers
            self._refuse(431)
        elif self._pending and self._timer is None:
            self._timer = self.loop.call_later(REQUEST_TIMEOUT_S, self._refuse, 408)

    def on_headers_complete(self) -> None:
        self._head = -1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head, self._pending = 0, False  # the next request's head starts
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def _refuse(self, status: int) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:  # refused already (413)
            self.transport.close()
            return
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head.append(b"content-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.write(b"".join(head))
        self.transport.close()


def listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn. Made with ``IPPROTO_TCP``, not 0: asyncio turns Nagle
    off (``TCP_NODELAY``) only on accepted sockets whose ``proto`` says TCP, and uvicorn
    writes a response's headers and body apart, so with Nagle on every response after the
    first on a kept-alive connection waited for the client's delayed ACK (uvloop sets
    ``TCP_NODELAY`` itself; plain asyncio, as in tests or without uvloop, does not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class Served:
    """``async with Served(app, host, port) as s: s.base_url`` — port 0 picks a free port."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """``tls``: ``(certificate file, key file)`` to serve HTTPS."""
        self.app = app
        self._host, self._port, self._tls = host, port, tls
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        if self._socket is None:
            raise RuntimeError("not serving")
        host, port = self._socket.getsockname()[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    async def start(self) -> None:
        self._socket = sock = listener(self._host, self._port)
        certfile, keyfile = self._tls or (None, None)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            proxy_headers=False,  # nothing here reads client addresses: no proxy middleware
            server_header=False,
            http=BoundedHttp,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()

    async def __aenter__(self) -> Served:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

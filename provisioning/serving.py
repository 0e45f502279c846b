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
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_FAST_BODY = 64 * 1024
"""Largest request body a fast-path route reads (its requests are small JSON objects)."""


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


def header(scope: Scope, name: bytes) -> str:
    """The first value of header ``name`` (lower case) in an ASGI scope, or ``""``."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class FastPath:
    """An ASGI app in front of ``app`` that answers the hot routes itself, straight in ASGI,
    ahead of the framework's middlewares, routing, dependency solving and request/response
    objects (FastAPI's part was a quarter of the server's CPU per mint, Starlette's objects
    another 32 µs a request on a bare uvicorn). Declare
    each handler as a framework route too, through ``endpoint``, so the OpenAPI schema (and
    ``app`` alone) still serve it. Everything else, lifespan included, goes to ``app``."""

    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], Handler]) -> None:
        self.app = app
        self.routes = dict(routes)
        """Handlers by ``(method, path)``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        handler = self.routes.get((scope["method"], scope["path"])) if http else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_FAST_BODY:
                break
        reply = TOO_LARGE if len(body) > MAX_FAST_BODY else await handler(scope, body)
        if reply.status in (204, 304):  # no body, so no Content-Length (RFC 9110)
            headers = list(reply.headers)
        else:
            length = str(len(reply.body)).encode()
            headers = [(b"content-type", reply.content_type), (b"content-length", length)]
            headers += reply.headers
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if reply.status == 204 else reply.body}
        )

    @staticmethod
    def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` as a framework endpoint (the route that the schema describes)."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            too_large = len(body) > MAX_FAST_BODY
            return (TOO_LARGE if too_large else await handler(request.scope, body)).response()

        endpoint.__name__, endpoint.__doc__ = handler.__name__, handler.__doc__  # for the schema
        return endpoint


def listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn. Made with ``IPPROTO_TCP``, not 0: asyncio turns Nagle
    off (``TCP_NODELAY``) only on accepted sockets whose ``proto`` says TCP, and uvicorn
    writes a response's headers and body apart, so with Nagle on every response after the
    first on a kept-alive connection waited ~40 ms for the client's delayed ACK (uvloop sets
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

"""Serve an ASGI app with uvicorn on the running event loop (the demo, tests, embedding)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Any

import uvicorn


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

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._host, self._port = host, port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        if self._socket is None:
            raise RuntimeError("not serving")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._socket = sock = listener(self._host, self._port)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
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

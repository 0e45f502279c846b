"""A tiny HTTP server on loopback that answers every request the same way, or never.

For faults no real server produces on purpose: a ``201`` whose body is not SDP, a service
that accepts the connection and then says nothing. Raw asyncio streams, so nothing in it
can hide the fault (no framework fixing up headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class Fixed:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    silent: bool = False
    """Accept the connection, read the request, never answer."""
    port: int = 0
    """0: any free port."""
    requests: int = 0
    base_url: str = ""


@asynccontextmanager
async def fixed_reply(reply: Fixed) -> AsyncIterator[Fixed]:
    hung: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # a request (small, one segment), or a TLS hello: answered
        reply.requests += 1
        if reply.silent:
            hung.append(writer)
            return
        head = [f"HTTP/1.1 {reply.status} X", f"Content-Length: {len(reply.body)}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + reply.body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", reply.port)
    port = server.sockets[0].getsockname()[1]
    reply.base_url = f"http://127.0.0.1:{port}"
    try:
        yield reply
    finally:
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()

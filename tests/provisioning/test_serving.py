"""``Served``: the uvicorn wrapper behind the stand-in, the demo's and the tests' servers."""

from __future__ import annotations

import asyncio
import socket

from starlette.types import Receive, Scope, Send

from provisioning.serving import Served


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_accepted_connections_have_nagle_off() -> None:
    """uvicorn writes a response's headers and body apart: with Nagle on, every response
    after the first on a kept-alive connection waited ~40 ms for the client's delayed ACK
    (the stand-in minted 23 keys/s on one connection instead of 1,400)."""
    async with Served(_ok) as served:
        host, port = served.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
            server = served._server
            assert server is not None
            connections = server.server_state.connections
            accepted = [c.transport.get_extra_info("socket") for c in connections]
            assert accepted
            for sock in accepted:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            writer.close()
            await writer.wait_closed()

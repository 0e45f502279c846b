"""``Served`` (the uvicorn wrapper behind the stand-in, the demo's and the tests' servers) and
``FastPath`` (the hot routes answered straight in ASGI)."""

from __future__ import annotations

import asyncio
import socket

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from appliance_common.serving import MAX_BODY, FastPath, Reply, Served, header


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


def _fast_app(calls: list[bytes]) -> tuple[FastAPI, FastPath]:
    """A FastAPI app with one framework route and one fast-path route declared on it."""

    async def fast(scope: Scope, body: bytes) -> Reply:
        """A fast route."""
        calls.append(body)
        auth = header(scope, b"authorization")
        return Reply(201, b'{"auth":"%s"}' % auth.encode(), ((b"retry-after", b"3"),))

    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        return {"via": "framework"}

    app.post("/fast")(FastPath.endpoint(fast))
    return app, FastPath(app, {("POST", "/fast"): fast})


async def test_fast_path_answers_its_route_and_hands_on_the_rest() -> None:
    calls: list[bytes] = []
    app, fast = _fast_app(calls)
    async with Served(fast) as served, httpx.AsyncClient(base_url=served.base_url) as http:
        reply = await http.post("/fast", content=b"{}", headers={"Authorization": "Bearer t"})
        assert (reply.status_code, reply.json()) == (201, {"auth": "Bearer t"})
        assert reply.headers["retry-after"] == "3"
        assert reply.headers["content-type"] == "application/json"
        assert (await http.get("/slow")).json() == {"via": "framework"}
        assert (await http.get("/missing")).status_code == 404
        assert "/fast" in (await http.get("/openapi.json")).json()["paths"]
    # the framework's own route is the same handler (what the schema and schemathesis use)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        reply = await http.post("/fast", content=b"{}", headers={"Authorization": "Bearer u"})
        assert (reply.status_code, reply.json()) == (201, {"auth": "Bearer u"})
        assert reply.headers["retry-after"] == "3"
    assert calls == [b"{}", b"{}"]


async def test_fast_path_refuses_a_body_over_its_limit() -> None:
    calls: list[bytes] = []
    _app, fast = _fast_app(calls)
    async with Served(fast) as served, httpx.AsyncClient(base_url=served.base_url) as http:
        reply = await http.post("/fast", content=b"x" * (MAX_BODY + 1))
        assert reply.status_code == 413
        assert reply.json()["error"]["code"] == "request_too_large"
        assert (await http.post("/fast", content=b"x" * MAX_BODY)).status_code == 201
    assert calls == [b"x" * MAX_BODY], "the handler never sees an oversized body"


def test_uvicorns_protocol_still_has_what_bounded_http_extends() -> None:
    """``BoundedHttp`` overrides HttpToolsProtocol's parser callbacks and reads its
    ``loop``/``transport``/``cycle``/``server_state``: fail by name when uvicorn changes them."""
    import inspect
    from importlib.metadata import version

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    pinned = version("uvicorn")
    for hook in ("data_received", "on_headers_complete", "on_message_complete", "connection_lost"):
        assert callable(getattr(HttpToolsProtocol, hook, None)), f"uvicorn {pinned}: no {hook}"
    init = inspect.getsource(HttpToolsProtocol.__init__)
    for attribute in ("self.loop", "self.transport", "self.cycle", "self.server_state"):
        assert attribute in init, f"uvicorn {pinned}: HttpToolsProtocol no longer sets {attribute}"

"""Closing or cancelling a call while aiortc gathers ICE candidates leaves no socket open.

aioice makes one UDP socket per host address and tells its ``Connection`` about them only
when all are made: a ``close()`` or a cancellation in between used to leak them (CI failed
with ``ResourceWarning: unclosed <socket ...>`` whenever the garbage collector found one).
The seam: the running loop's ``create_datagram_endpoint`` makes the socket, then holds
gathering until the test lets it go.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.errors import RealtimeUnreachable
from appliance.realtime.webrtc import RealtimeSession
from appliance_common.ice import PeerConnection
from standin import StandIn, StandInConfig
from standin.call import Call
from tests.realtime.test_session_events import offline_session


class HeldGathering:
    """Every UDP endpoint is made at once, then waits for ``let_go`` before aioice sees it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._create = loop.create_datagram_endpoint
        self.armed = False
        self.created: list[asyncio.DatagramTransport] = []
        self.holding = asyncio.Event()
        self.let_go = asyncio.Event()

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await self._create(*args, **kwargs)
        if self.armed:
            self.created.append(transport)
            self.holding.set()
            await self.let_go.wait()
        return transport, protocol

    def left_open(self) -> list[asyncio.DatagramTransport]:
        return [t for t in self.created if not t.is_closing()]


@pytest.fixture
async def gathering(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HeldGathering]:
    loop = asyncio.get_running_loop()
    held = HeldGathering(loop)
    monkeypatch.setattr(loop, "create_datagram_endpoint", held.create_datagram_endpoint)
    yield held
    for transport in held.left_open():  # don't let a failing test fail later ones
        transport.close()


async def connect_until_held(
    gathering: HeldGathering,
) -> tuple[RealtimeSession, asyncio.Task[None]]:
    gathering.armed = True
    session = offline_session([])
    connecting = asyncio.create_task(session.connect())
    await gathering.holding.wait()
    return session, connecting


async def test_closing_a_session_while_it_gathers_closes_its_sockets(
    gathering: HeldGathering,
) -> None:
    session, connecting = await connect_until_held(gathering)
    closing = asyncio.create_task(session.close())
    gathering.let_go.set()
    await closing
    with contextlib.suppress(Exception):  # nothing listens on port 9
        await connecting
    assert gathering.created
    assert gathering.left_open() == []


async def test_a_connect_cancelled_while_gathering_leaves_no_socket_open(
    gathering: HeldGathering,
) -> None:
    session, connecting = await connect_until_held(gathering)
    connecting.cancel()  # what asyncio.wait_for does when connect_s runs out
    with pytest.raises(asyncio.CancelledError):
        await connecting
    gathering.let_go.set()
    await session.close()
    assert gathering.created
    assert gathering.left_open() == []


async def test_a_stand_in_answer_cancelled_while_gathering_leaves_no_socket_open(
    gathering: HeldGathering,
) -> None:
    offerer = PeerConnection()
    offerer.addTransceiver("audio", direction="sendrecv")
    offerer.createDataChannel("oai-events")
    await offerer.setLocalDescription(await offerer.createOffer())
    standin = StandIn(StandInConfig(api_key="sk-unused"))
    call = Call(
        "rtc_test",
        {"type": "realtime"},
        voice=standin.voice,
        script=standin.script,
        faults=standin.faults,
        max_session_s=60,
        on_closed=lambda c: None,
    )
    gathering.armed = True
    answering = asyncio.create_task(call.answer(offerer.localDescription.sdp))
    await gathering.holding.wait()
    answering.cancel()  # the HTTP request handling it went away: the call is nobody's
    gathering.let_go.set()
    with pytest.raises(asyncio.CancelledError):
        await answering
    await offerer.close()
    assert gathering.created
    assert gathering.left_open() == []


async def test_a_close_cancelled_halfway_still_closes_every_socket(
    gathering: HeldGathering,
) -> None:
    gathering.armed = True
    gathering.let_go.set()
    session = offline_session([])
    with pytest.raises(RealtimeUnreachable):  # nothing listens on port 9
        await session.connect()
    pc = session.pc
    halfway = asyncio.Event()

    @pc.on("signalingstatechange")
    def _closing_started() -> None:
        if pc.signalingState == "closed":
            halfway.set()

    closing = asyncio.create_task(session.close())
    await halfway.wait()
    closing.cancel()  # App.shutdown cancels its tasks, a session's close among them
    with pytest.raises(asyncio.CancelledError):
        await closing
    try:  # a second close() returns when the first one is done
        await asyncio.wait_for(pc.close(), 10)
    except TimeoutError:
        pytest.fail("the cancelled close never finished")
    assert gathering.created
    assert gathering.left_open() == []

"""ICE helpers: a peer connection that leaves no socket behind, and loopback candidates.

aioice hands the UDP sockets it makes while gathering to its ``Connection`` only when all
are made, so ``close()`` during ``setLocalDescription()``, or cancelling it, leaked them.
A cancelled ``close()`` left them open too. ``PeerConnection`` gathers and closes in tasks
of its own that cancelling the caller does not interrupt; its ``close()`` waits for gathering.

aioice skips 127.0.0.1 when it lists host addresses, so two peers on one machine with
no other interface could never connect. ``allow_loopback()`` patches aioice's address
lister once per process to add the loopback address. Production devices never call it.
"""

from __future__ import annotations

import asyncio
import logging

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

log = logging.getLogger(__name__)

GATHERING_WAIT_S = 10.0
"""How long ``PeerConnection.close()`` waits for a gathering in progress."""


class PeerConnection(RTCPeerConnection):
    """An ``RTCPeerConnection`` whose ``close()`` closes every socket it gathered, even when
    the task that calls it is cancelled."""

    def __init__(self, configuration: RTCConfiguration | None = None) -> None:
        super().__init__(configuration)
        self._describing: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None

    async def setLocalDescription(
        self, sessionDescription: RTCSessionDescription | None = None
    ) -> None:
        task = asyncio.ensure_future(super().setLocalDescription(sessionDescription))
        self._describing.add(task)
        task.add_done_callback(self._described)
        await asyncio.shield(task)

    def _described(self, task: asyncio.Task[None]) -> None:
        self._describing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("setLocalDescription failed: %r", task.exception())

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._describing:
            _, pending = await asyncio.wait(self._describing, timeout=GATHERING_WAIT_S)
            if pending:
                log.warning("closing during ICE gathering; its sockets may stay open")
        await super().close()


_original = aioice.ice.get_host_addresses


def _with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses: list[str] = list(_original(use_ipv4, use_ipv6))
    if use_ipv4 and "127.0.0.1" not in addresses:
        addresses.insert(0, "127.0.0.1")
    return addresses


def allow_loopback() -> None:
    """Idempotently make aiortc offer 127.0.0.1 as a host candidate."""
    aioice.ice.get_host_addresses = _with_loopback


def loopback_allowed() -> bool:
    return aioice.ice.get_host_addresses is _with_loopback

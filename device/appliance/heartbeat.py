"""Heartbeats: the device tells its provisioning server how it is doing.

Sent a few seconds after start and then every ``provisioning.heartbeat_s``: version, uptime,
the interval, state, the last turn's latency, reconnect / wake / false-wake / barge-in counts,
the echo canceller in use and the last error; and only with ``provisioning.report_transcripts``
on a short summary of what was said (stored only when the device's group opts in). The server
stores it with last-seen and sums it into the console's history; its reply may ask the device
to rotate its key (an admin's request), which the device does at once. A failed heartbeat is logged
and retried at the next interval: it never affects the conversation, but an unreachable
server while the device is idle shows as OFFLINE (and an answer ends that).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from appliance import telemetry
from appliance.errors import ApplianceError, ProvisioningError, ProvisioningUnavailable

log = logging.getLogger(__name__)


class HeartbeatSink(Protocol):
    async def heartbeat(self, health: dict[str, Any]) -> dict[str, Any]:
        """Deliver a report; the server's requests in reply (``{"rotate_key": true}``)."""
        ...

    async def rotate_key(self) -> None: ...


class Reporting(Protocol):
    """What a heartbeat needs of the device (``appliance.app.App`` is one)."""

    def vitals(self) -> telemetry.Vitals: ...

    def server_unreachable(self, exc: ProvisioningError) -> None: ...

    def server_reachable(self) -> None: ...


def health(
    device: Reporting, started: float, transcripts: bool = True, interval_s: float | None = None
) -> dict[str, Any]:
    """The device's health report now (``started``: when it started, monotonic)."""
    uptime_s = time.monotonic() - started
    return telemetry.health(device.vitals(), uptime_s, transcripts, interval_s)


async def send(
    sink: HeartbeatSink,
    device: Reporting,
    started: float,
    transcripts: bool = True,
    interval_s: float | None = None,
) -> bool:
    """One heartbeat; ``False`` (logged) when the server could not be reached. When the
    reply asks for a new key (an admin's request), the device rotates it now; a failed
    rotation is logged and the server asks again at the next heartbeat."""
    try:
        reply = await sink.heartbeat(health(device, started, transcripts, interval_s))
    except ProvisioningUnavailable as exc:
        log.warning("heartbeat not delivered: %s", exc)
        device.server_unreachable(exc)
        return False
    except ApplianceError as exc:
        log.warning("heartbeat not delivered: %s", exc)
        return False
    device.server_reachable()
    if reply.get("rotate_key") is True:
        try:
            await sink.rotate_key()
        except ApplianceError as exc:
            log.warning("key rotation asked by the server failed: %s", exc)
        else:
            log.info("device key rotated, as the provisioning server asked")
    return True


async def heartbeat_loop(
    sink: HeartbeatSink,
    device: Reporting,
    interval_s: float,
    transcripts: bool = True,
    first_s: float = 5.0,
) -> None:
    started = time.monotonic()
    await asyncio.sleep(first_s)
    while True:
        await send(sink, device, started, transcripts, interval_s)
        await asyncio.sleep(interval_s)

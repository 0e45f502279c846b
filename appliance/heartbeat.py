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

from appliance import __version__
from appliance.app import App
from appliance.errors import ApplianceError, ProvisioningUnavailable

log = logging.getLogger(__name__)
SUMMARY_CHARS = 200


class HeartbeatSink(Protocol):
    async def heartbeat(self, health: dict[str, Any]) -> dict[str, Any]:
        """Deliver a report; the server's requests in reply (``{"rotate_key": true}``)."""
        ...

    async def rotate_key(self) -> None: ...


def health(
    app: App, started: float, transcripts: bool = True, interval_s: float | None = None
) -> dict[str, Any]:
    """What the device reports (no secrets: no keys, no tokens); ``interval_s``, how often it
    reports, tells the server when to call it offline."""
    stats = app.stats
    report: dict[str, Any] = {
        "version": __version__,
        "uptime_s": round(time.monotonic() - started),
        "state": app.snapshot.state.value,
        "status": app.status_text(),
        "turns": stats.turns,
        "last_turn_latency_ms": (
            None if stats.last_turn_latency_ms is None else round(stats.last_turn_latency_ms)
        ),
        "reconnects": stats.reconnects,
        "wakes": stats.wakes,
        "false_wakes": stats.false_wakes,
        "barge_ins": app.barge_ins,
        "tool_calls": stats.tool_calls,
        "aec": app.frontend.echo.name if app.frontend is not None else "none",
        **echo_health(app, time.monotonic() - started),
        "last_error": app.last_error,
    }
    if interval_s is not None:
        report["heartbeat_s"] = interval_s
    if transcripts:
        last: dict[str, str] = {}
        for role, text in reversed(stats.transcripts):
            if role in ("user", "assistant") and role not in last:
                last[role] = text[:SUMMARY_CHARS]
        report["last_turn"] = last
    return report


def echo_health(app: App, uptime_s: float) -> dict[str, Any]:
    """Echo suppression in this room: the canceller's ERLE, how often it diverged, barge-ins
    that were probably the device's own echo, and false wakes, per hour of uptime (an
    operator compares rooms and HATs by these)."""
    hours = max(uptime_s, 1.0) / 3600.0
    report: dict[str, Any] = {"false_wakes_per_hour": round(app.stats.false_wakes / hours, 2)}
    fe = app.frontend
    if fe is None:
        return report
    health = fe.health
    report.update(
        aec_erle_db=round(fe.erle_db, 1),
        aec_divergences=fe.divergences,
        aec_delay_ms=None if fe.measured_delay_ms is None else round(fe.measured_delay_ms),
        playback_min=round(health.playback_s / 60.0, 1),
        local_barge_ins=health.barge_ins,
        self_interruptions=health.suspected_self_interruptions,
        self_interruptions_per_hour=round(health.suspected_self_interruptions / hours, 2),
    )
    return report


async def send(
    sink: HeartbeatSink,
    app: App,
    started: float,
    transcripts: bool = True,
    interval_s: float | None = None,
) -> bool:
    """One heartbeat; ``False`` (logged) when the server could not be reached. When the
    reply asks for a new key (an admin's request), the device rotates it now; a failed
    rotation is logged and the server asks again at the next heartbeat."""
    try:
        reply = await sink.heartbeat(health(app, started, transcripts, interval_s))
    except ProvisioningUnavailable as exc:
        log.warning("heartbeat not delivered: %s", exc)
        app.server_unreachable(exc)
        return False
    except ApplianceError as exc:
        log.warning("heartbeat not delivered: %s", exc)
        return False
    app.server_reachable()
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
    app: App,
    interval_s: float,
    transcripts: bool = True,
    first_s: float = 5.0,
) -> None:
    started = time.monotonic()
    await asyncio.sleep(first_s)
    while True:
        await send(sink, app, started, transcripts, interval_s)
        await asyncio.sleep(interval_s)

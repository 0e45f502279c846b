"""Heartbeats: the device tells its provisioning server how it is doing.

Sent a few seconds after start and then every ``provisioning.heartbeat_s``: version, uptime,
state, the last turn's latency and (unless ``provisioning.report_transcripts`` is off) a
short summary of what was said, reconnect / wake / false-wake / barge-in counts, the echo
canceller in use and the last error. The server stores it with last-seen; the dashboard
shows it. A failed heartbeat is logged and retried at the next interval: it never affects
the conversation, but an unreachable server while the device is idle shows as OFFLINE (and
an answer ends that).
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
    async def heartbeat(self, health: dict[str, Any]) -> None: ...


def health(app: App, started: float, transcripts: bool = True) -> dict[str, Any]:
    """What the device reports (no secrets: no keys, no tokens)."""
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
        "last_error": app.last_error,
    }
    if transcripts:
        last: dict[str, str] = {}
        for role, text in reversed(stats.transcripts):
            if role in ("user", "assistant") and role not in last:
                last[role] = text[:SUMMARY_CHARS]
        report["last_turn"] = last
    return report


async def send(sink: HeartbeatSink, app: App, started: float, transcripts: bool = True) -> bool:
    """One heartbeat; ``False`` (logged) when the server could not be reached."""
    try:
        await sink.heartbeat(health(app, started, transcripts))
    except ProvisioningUnavailable as exc:
        log.warning("heartbeat not delivered: %s", exc)
        app.server_unreachable(exc)
        return False
    except ApplianceError as exc:
        log.warning("heartbeat not delivered: %s", exc)
        return False
    app.server_reachable()
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
        await send(sink, app, started, transcripts)
        await asyncio.sleep(interval_s)

"""What the device knows about how it is doing: counters, the status line and the health report.

``Stats`` is the one mutable record the running parts count into. Everything else here is a
pure function of a ``Vitals`` reading (a copy taken by the app): ``status_text`` for systemd's
STATUS= line, ``health`` for heartbeats and the ``device_status`` tool. Nothing here does I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance import machine as m

if TYPE_CHECKING:
    from appliance.audio.frontend import FrontEnd

log = logging.getLogger(__name__)
SUMMARY_CHARS = 200
"""How much of each side of the last turn a heartbeat carries (when transcripts are on)."""


@dataclass
class Stats:
    turns: int = 0
    last_turn_latency_ms: float | None = None
    """From the end of the user's turn to the first reply audio."""
    reconnects: int = 0
    """Sessions reopened on our own after a call broke off mid-conversation."""
    false_wakes: int = 0
    """Wake-word activations after which nobody spoke."""
    wakes: int = 0
    tool_calls: int = 0
    barge_ins: int = 0
    """Replies the user interrupted by voice, heard locally after echo suppression."""
    last_error: str = ""
    """Why the last session failed or was lost, or which audio device is missing."""
    transcripts: list[tuple[str, str]] = field(default_factory=list)
    states: list[tuple[float, m.State]] = field(default_factory=list)
    woke: bool = False
    """The current activation came from the wake word (a false wake if nobody speaks)."""
    turn_ended_at: float | None = None

    def entered(self, old: m.State, new: m.State, snap: m.Snapshot, now: float) -> None:
        """Count a state change (``snap`` is the machine's snapshot after it)."""
        self.states.append((now, new))
        if new is m.State.THINKING and old is m.State.LISTENING:
            self.turn_ended_at = now
        if old is m.State.OFFLINE and new is m.State.CONNECTING and snap.resume:
            self.reconnects += 1
        if old is m.State.LISTENING and new is m.State.IDLE and self.woke and not snap.heard_user:
            self.false_wakes += 1
        if new in (m.State.THINKING, m.State.IDLE, m.State.OFFLINE, m.State.ERROR):
            self.woke = False
        if new is m.State.SPEAKING and self.turn_ended_at is not None:
            latency = (now - self.turn_ended_at) * 1000
            self.last_turn_latency_ms = latency
            self.turns += 1
            self.turn_ended_at = None
            log.info(
                "reply started %.0f ms after the end of the turn",
                latency,
                extra={"latency_ms": round(latency)},
            )


@dataclass(frozen=True)
class EchoVitals:
    """The echo suppression's figures in this room."""

    name: str
    erle_db: float
    divergences: int
    delay_ms: float | None
    playback_s: float
    local_barge_ins: int
    self_interruptions: int


@dataclass(frozen=True)
class Vitals:
    """One reading of the device, enough for its status line and health report."""

    snapshot: m.Snapshot
    stats: Stats
    wake_word: str
    """The configured wake word ("" when only the button activates)."""
    echo: EchoVitals | None


def echo_vitals(frontend: FrontEnd | None) -> EchoVitals | None:
    """Read the front end's echo figures (``None`` without a front end)."""
    if frontend is None:
        return None
    health = frontend.health
    return EchoVitals(
        name=frontend.echo.name,
        erle_db=frontend.erle_db,
        divergences=frontend.divergences,
        delay_ms=frontend.measured_delay_ms,
        playback_s=health.playback_s,
        local_barge_ins=health.barge_ins,
        self_interruptions=health.suspected_self_interruptions,
    )


def status_text(vitals: Vitals) -> str:
    """One line for systemd's STATUS=: what the device is doing now."""
    snap, last_error = vitals.snapshot, vitals.stats.last_error
    state = snap.state
    match state:
        case m.State.IDLE:
            wake = vitals.wake_word
            return f"idle, wake word {wake}" if wake else "idle, press the button to talk"
        case m.State.LISTENING | m.State.THINKING | m.State.SPEAKING:
            return f"in conversation ({state.value})"
        case m.State.OFFLINE:
            retry = snap.retry_s
            return f"offline: {last_error or 'unreachable'}, retry in {retry:.0f} s"
        case m.State.ERROR:
            return f"error: {last_error or 'unknown'}"
    return str(state.value)


def health(
    vitals: Vitals, uptime_s: float, transcripts: bool = True, interval_s: float | None = None
) -> dict[str, Any]:
    """What the device reports (no secrets: no keys, no tokens); ``interval_s``, how often it
    reports, tells the server when to call it offline."""
    stats = vitals.stats
    report: dict[str, Any] = {
        "version": __version__,
        "uptime_s": round(uptime_s),
        "state": vitals.snapshot.state.value,
        "status": status_text(vitals),
        "turns": stats.turns,
        "last_turn_latency_ms": (
            None if stats.last_turn_latency_ms is None else round(stats.last_turn_latency_ms)
        ),
        "reconnects": stats.reconnects,
        "wakes": stats.wakes,
        "false_wakes": stats.false_wakes,
        "barge_ins": stats.barge_ins,
        "tool_calls": stats.tool_calls,
        "aec": vitals.echo.name if vitals.echo is not None else "none",
        **echo_health(vitals, uptime_s),
        "last_error": stats.last_error,
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


def echo_health(vitals: Vitals, uptime_s: float) -> dict[str, Any]:
    """Echo suppression in this room: the canceller's ERLE, how often it diverged, barge-ins
    that were probably the device's own echo, and false wakes, per hour of uptime (an
    operator compares rooms and HATs by these)."""
    hours = max(uptime_s, 1.0) / 3600.0
    report: dict[str, Any] = {"false_wakes_per_hour": round(vitals.stats.false_wakes / hours, 2)}
    echo = vitals.echo
    if echo is None:
        return report
    report.update(
        aec_erle_db=round(echo.erle_db, 1),
        aec_divergences=echo.divergences,
        aec_delay_ms=None if echo.delay_ms is None else round(echo.delay_ms),
        playback_min=round(echo.playback_s / 60.0, 1),
        local_barge_ins=echo.local_barge_ins,
        self_interruptions=echo.self_interruptions,
        self_interruptions_per_hour=round(echo.self_interruptions / hours, 2),
    )
    return report

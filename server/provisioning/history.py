"""Heartbeat history: every device's reports summarised into time buckets, with retention.

Each heartbeat adds to two rows of ``heartbeat_buckets``: its device's 15-minute bucket (kept
two days, the 24 h plots) and its hourly bucket (kept eight days, the 7-day plots). A row
holds sums, not reports: beats, a turn-latency histogram (percentiles are read from it),
reconnects, wakes, false wakes, self-interruptions and errors since the previous report, and
ERLE and session-length sums. The devices report counters since their start; the difference
to the previous report (kept in ``devices.health``) is what a bucket adds, and a device that
restarted (its uptime went down) starts again from zero. A fleet of 10,000 devices beating
once a minute so keeps about 384 rows per device whatever its age (``make bench`` measures
the bytes).

``History.record`` runs inside the mint ledger's batch transaction (``provisioning.ledger``)
on the raw DBAPI cursor, like the ledger's own statements: one read of the batch's devices
(their previous report and whether their group lets transcripts leave the device) and one
upsert per resolution. A report from a device whose group has not opted in loses its
``last_turn`` (the words) here, before it is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

LATENCY_EDGES_MS = (250, 500, 750, 1000, 1500, 2000, 3000)
"""Upper edges of the turn-latency histogram's bins; an eighth bin holds the rest."""
LATENCY_BINS = len(LATENCY_EDGES_MS) + 1
COUNTERS = ("reconnects", "wakes", "false_wakes", "self_interruptions")
"""Counters the devices report since their start; buckets hold their increase."""
PURGE_EVERY_S = 60.0
DEFAULT_HEARTBEAT_S = 300.0
"""A device that does not say how often it beats is taken to beat this often (the old default)."""
OFFLINE_AFTER_BEATS = 2.5
"""A device is offline once this many of its heartbeat intervals passed without one."""


@dataclass(frozen=True, slots=True)
class Resolution:
    span_s: int
    keep_s: int


RESOLUTIONS = (Resolution(900, 2 * 86400), Resolution(3600, 8 * 86400))
"""15-minute buckets for the last day's plots, hourly ones for the last week's."""

COLUMNS = (
    "beats",
    "latency_n",
    "latency_sum",
    "latency_max",
    *(f"lat_h{i}" for i in range(LATENCY_BINS)),
    *COUNTERS,
    "errors",
    "erle_sum",
    "erle_n",
    "session_sum",
    "session_n",
)
MAXED = {"latency_max"}


def _number(report: dict[str, Any], *names: str) -> float | None:
    """The first of ``names`` that is a number, at the top level or in ``aec_health``."""
    nested = report.get("aec_health")
    for source in (report, nested if isinstance(nested, dict) else {}):
        for name in names:
            value = source.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


def offline_after(health: dict[str, Any]) -> float:
    """Seconds without a request after which a device reporting ``health`` is offline."""
    interval = health.get("heartbeat_s")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
        return OFFLINE_AFTER_BEATS * float(interval)
    return OFFLINE_AFTER_BEATS * DEFAULT_HEARTBEAT_S


def standing(health: dict[str, Any]) -> tuple[float, str | None, bool]:
    """What the devices table keeps of a report for the console's counts (columns
    ``offline_after``, ``state``, ``in_error``)."""
    state = health.get("state")
    text = str(state)[:32] if state else None
    return offline_after(health), text, text == "error" or bool(health.get("last_error"))


def latency_bin(ms: float) -> int:
    return next((i for i, edge in enumerate(LATENCY_EDGES_MS) if ms <= edge), LATENCY_BINS - 1)


def summarise(report: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, float]:
    """What one report adds to its buckets, given the device's report before it."""
    prev = previous or {}
    uptime, prev_uptime = _number(report, "uptime_s"), _number(prev, "uptime_s")
    restarted = uptime is not None and prev_uptime is not None and uptime < prev_uptime
    row: dict[str, float] = dict.fromkeys(COLUMNS, 0.0)
    row["beats"] = 1
    latency = _number(report, "last_turn_latency_ms")
    turns, prev_turns = _number(report, "turns"), _number(prev, "turns")
    new_turn = turns is None or prev_turns is None or restarted or turns != prev_turns
    if latency is not None and latency >= 0 and new_turn:
        row["latency_n"], row["latency_sum"], row["latency_max"] = 1, latency, latency
        row[f"lat_h{latency_bin(latency)}"] = 1
    for name in COUNTERS:
        now_count = _number(report, name)
        if now_count is None:
            continue
        before = None if restarted else _number(prev, name)
        row[name] = max(0.0, now_count - before) if before is not None else now_count
    error = report.get("last_error")
    if (error and (restarted or error != prev.get("last_error"))) or (
        report.get("state") == "error" and prev.get("state") != "error"
    ):
        row["errors"] = 1
    erle = _number(report, "erle_db", "aec_erle_db")
    if erle is not None:
        row["erle_sum"], row["erle_n"] = erle, 1
    session = _number(report, "session_s", "last_session_s")
    if session is not None and session >= 0:
        row["session_sum"], row["session_n"] = session, 1
    return row


def percentile(hist: list[float], q: float) -> float | None:
    """The upper edge of the histogram bin holding quantile ``q`` (an upper bound), ``None``
    with no samples; the open last bin reports its lower edge."""
    total = sum(hist)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank and count > 0:
            return float(LATENCY_EDGES_MS[min(i, len(LATENCY_EDGES_MS) - 1)])
    return float(LATENCY_EDGES_MS[-1])


class History:
    """The ledger's hook (``record``, ``purge``) plus the reads of the console."""

    def __init__(self, dialect: str, on_beats: Callable[[int], None] | None = None) -> None:
        self.pg = dialect == "postgresql"
        self.mark = "%s" if self.pg else "?"
        self._on_beats = on_beats
        self._next_purge = 0.0
        cols = ", ".join(COLUMNS)
        sets = ", ".join(
            f"{c} = {'GREATEST' if self.pg else 'MAX'}(heartbeat_buckets.{c}, excluded.{c})"
            if c in MAXED
            else f"{c} = heartbeat_buckets.{c} + excluded.{c}"
            for c in COLUMNS
        )
        self._upsert = self.sql(
            "INSERT INTO heartbeat_buckets (span, bucket, device_id, {cols}) VALUES ({marks}) "
            "ON CONFLICT (span, bucket, device_id) DO UPDATE SET {sets}",
            cols=cols,
            marks=", ".join(["?"] * (3 + len(COLUMNS))),
            sets=sets,
        )

    def sql(self, template: str, **parts: str) -> str:
        """``template`` with its ``{parts}`` (column names and placeholders, never values)
        filled in and ``?`` as the driver's placeholder."""
        return template.format(**parts).replace("?", self.mark)

    def record(self, cur: Any, reports: list[tuple[str, dict[str, Any]]], now: float) -> None:
        """Add a batch's reports (``(device_id, report)``, each device once) to their
        buckets; drop ``last_turn`` from the reports of devices whose group keeps words on
        the device. Runs in the ledger's transaction, before the reports are stored."""
        if not reports:
            return
        ids = [device_id for device_id, _ in reports]
        cur.execute(
            self.sql(
                "SELECT d.id, d.health, g.report_transcripts FROM devices d "
                'LEFT OUTER JOIN groups g ON d."group" = g.name WHERE d.id IN ({ids})',
                ids=", ".join(["?"] * len(ids)),
            ),
            ids,
        )
        known = {row[0]: (as_dict(row[1]), bool(row[2])) for row in cur.fetchall()}
        rows = []
        for device_id, report in reports:
            previous, transcripts = known.get(device_id, (None, False))
            if not transcripts:
                report.pop("last_turn", None)
            summary = summarise(report, previous)
            values = [summary[c] for c in COLUMNS]
            for res in RESOLUTIONS:
                bucket = int(now) - int(now) % res.span_s
                rows.append((res.span_s, bucket, device_id, *values))
        cur.executemany(self._upsert, rows)
        if self._on_beats is not None:
            self._on_beats(len(reports))

    def purge(self, cur: Any, now: float) -> None:
        """Delete buckets past their retention (at most once a minute)."""
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        for res in RESOLUTIONS:
            cur.execute(
                self.sql("DELETE FROM heartbeat_buckets WHERE span = ? AND bucket < ?"),
                [res.span_s, int(now) - res.keep_s],
            )


def series(rows: Iterable[Any], span_s: int, start: int, end: int) -> dict[str, list[Any]]:
    """Plot-ready columns from bucket rows (``HeartbeatBucket``): one entry per bucket from
    ``start`` to ``end``, ``None`` where the device sent nothing."""
    by_bucket = {r.bucket: r for r in rows}
    out: dict[str, list[Any]] = {
        k: []
        for k in (
            "t",
            "beats",
            "latency_p50",
            "latency_p95",
            "latency_max",
            "reconnects",
            "false_wakes_per_h",
            "self_interruptions",
            "erle_db",
            "session_s",
            "errors",
        )
    }
    per_hour = 3600 / span_s
    for bucket in range(start - start % span_s, end + 1, span_s):
        r = by_bucket.get(bucket)
        out["t"].append(bucket)
        if r is None:
            for k in out:
                if k != "t":
                    out[k].append(None)
            continue
        hist = [float(getattr(r, f"lat_h{i}")) for i in range(LATENCY_BINS)]
        out["beats"].append(r.beats)
        out["latency_p50"].append(percentile(hist, 0.5))
        out["latency_p95"].append(percentile(hist, 0.95))
        out["latency_max"].append(r.latency_max if r.latency_n else None)
        out["reconnects"].append(r.reconnects)
        out["false_wakes_per_h"].append(round(r.false_wakes * per_hour, 2))
        out["self_interruptions"].append(r.self_interruptions)
        out["erle_db"].append(round(r.erle_sum / r.erle_n, 1) if r.erle_n else None)
        out["session_s"].append(round(r.session_sum / r.session_n) if r.session_n else None)
        out["errors"].append(r.errors)
    return out


def as_dict(value: Any) -> dict[str, Any] | None:
    """A JSON column's object: text on SQLite, already decoded by psycopg."""
    decoded = from_json(value) if isinstance(value, str | bytes) else value
    return decoded if isinstance(decoded, dict) else None

"""The fleet console: ``/console`` (a static page and its script, uPlot for the plots) and the
admin API it reads: the fleet overview (counted in SQL, one page of devices at a time), its
live feed (Server-Sent Events, ``provisioning/feed.py``), a device's detail and history,
groups' transcript opt-in, enrollment tokens and a filterable audit log. Fleet gauges for
``/metrics`` too.

Every route here sits behind the admin API's own check (``app.state.admin_identity``, set by
``server/provisioning/admin.py``), with the same ``Authorization: Bearer adm_…`` credential. The
page keeps the credential in ``sessionStorage`` and sends it in that header, never in a
cookie, so a form on another site cannot act with it (no CSRF). Every change is audited.
See docs/console.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic_core import to_json
from sqlalchemy import (
    Connection,
    Select,
    String,
    and_,
    case,
    func,
    not_,
    or_,
    select,
    true,
    type_coerce,
)
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from provisioning.admin import _error
from provisioning.feed import AdminChanges, FleetFeed
from provisioning.history import History, as_dict, series
from provisioning.models import ModelLifecycle
from provisioning.schema import TranscriptsRequest, body, errors
from provisioning.store import (
    Audit,
    Device,
    EnrollmentToken,
    Group,
    HeartbeatBucket,
    Store,
)

JSON = dict[str, Any]
FALSE_WAKES_PER_HOUR = 3
"""More false wakes than this in the last hour needs attention."""
SELF_INTERRUPTIONS_PER_HOUR = 3
"""More self-interruptions (the device's own voice barging in) than this in the last hour."""
MAX_PAGE = 500
"""Most devices one overview page lists."""
NOISY_S = 60.0
"""How long the list of devices over a threshold in the last hour is reused."""
PING_S = 15
"""A comment line on a quiet event stream this often (proxies keep it open)."""
RANGES = {"24h": (900, 86400), "7d": (3600, 7 * 86400)}
"""Plot ranges: bucket span and length."""
STATIC = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}


@dataclass(slots=True)
class DeviceView:
    id: str
    name: str
    group: str
    status: str
    """``online``, ``offline``, ``disabled`` or ``revoked``."""
    state: str
    last_seen: float | None
    health: JSON
    attention: list[str] = field(default_factory=list)

    def as_json(self) -> JSON:
        h = self.health
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "status": self.status,
            "state": self.state,
            "last_seen": self.last_seen,
            "last_error": h.get("last_error"),
            "version": h.get("version"),
            "uptime_s": h.get("uptime_s"),
            "last_turn_latency_ms": h.get("last_turn_latency_ms"),
            "reconnects": h.get("reconnects"),
            "false_wakes": h.get("false_wakes"),
            "wakes": h.get("wakes"),
            "attention": self.attention,
        }


class Fleet:
    """Reads the fleet for the console and the gauges; holds the heartbeat history hook and
    the counters the ledger feeds.

    The overview is counted in SQL (one pass over narrow columns of ``devices``: status,
    reported state, error flag, whether the device needs attention) and lists one page of
    devices, attention first; only that page's health reports are read and decoded."""

    def __init__(
        self,
        store: Store,
        registry: CollectorRegistry,
        lifecycle: ModelLifecycle | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.lifecycle, self.clock = store, lifecycle, clock
        self.heartbeats = Counter("provisioning_heartbeats", "Heartbeats stored", registry=registry)
        self.refusals = Counter(
            "provisioning_refusals",
            "Device requests refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.history = History(store.engine.dialect.name, on_beats=self.heartbeats.inc)
        self._lock = threading.Lock()
        self._noisy_read: tuple[float, list[str]] = (float("-inf"), [])
        """When the devices over a threshold were last read, and which they were."""
        self._noisy_busy = False
        """Whether a thread is reading them again."""
        self.feed = FleetFeed(self)
        """Pushes the counts to open consoles (``GET /v1/admin/console/events``)."""
        registry.register(_Gauges(self))

    def refused(self, code: str) -> None:
        self.refusals.labels(code).inc()

    def _warnings(self, db: Connection) -> dict[str, list[str]]:
        """Model warnings by group (only groups that have some)."""
        if self.lifecycle is None:
            return {}
        out: dict[str, list[str]] = {}
        for name, profile in db.execute(select(Group.name, Group.profile)):
            found = [
                f"{f.field} {f.model} "
                + ("was shut down" if f.retired else f"retires on {f.shutdown}")
                for f in self.lifecycle.findings(profile or {})
            ]
            if found:
                out[name] = found
        return out

    @staticmethod
    def _noisy(now: float, ids: list[str] | None = None) -> Select[str, int, int]:
        """The devices (of ``ids``, or all) over a false-wake or self-interruption threshold
        in the last hour, with those counts. Grouped by ``device_id || ''``: with SQLite's
        statistics (``ANALYZE``) the planner would otherwise walk the per-device index to
        skip a sort, one lookup per row (5x slower) instead of the last hour's contiguous
        range of the primary key."""
        hour = int(now) - 3600
        device = HeartbeatBucket.device_id.concat("")
        false_wakes = func.sum(HeartbeatBucket.false_wakes)
        self_interruptions = func.sum(HeartbeatBucket.self_interruptions)
        return (
            select(device, false_wakes, self_interruptions)
            .where(HeartbeatBucket.span == 900, HeartbeatBucket.bucket >= hour - 900)
            .where(HeartbeatBucket.device_id.in_(ids) if ids is not None else true())
            .group_by(device)
            .having(
                (false_wakes > FALSE_WAKES_PER_HOUR)
                | (self_interruptions > SELF_INTERRUPTIONS_PER_HOUR)
            )
        )

    def noisy(self, db: Connection, now: float, fresh: bool = False) -> list[str]:
        """Every device over a threshold in the last hour (``fresh``: read now). Read at
        most every ``NOISY_S``, and then on a thread of its own while the request goes on
        with the list it has (the window is counted in 15-minute buckets: a minute late
        changes nothing); only the very first read is waited for."""
        with self._lock:
            at, ids = self._noisy_read
            first = at == float("-inf")
            again = not (fresh or first or self._noisy_busy) and now - at >= NOISY_S
            self._noisy_busy = self._noisy_busy or again
        if again:
            threading.Thread(target=self._read_noisy, name="console-noisy", daemon=True).start()
        return self._read_noisy(db) if fresh or first else ids

    def _read_noisy(self, db: Connection | None = None) -> list[str]:
        now = self.clock()
        try:
            if db is None:
                with self.store.engine.connect() as own:
                    ids = sorted(str(row[0]) for row in own.execute(self._noisy(now)))
            else:
                ids = sorted(str(row[0]) for row in db.execute(self._noisy(now)))
        finally:
            with self._lock:
                self._noisy_busy = False
        with self._lock:
            self._noisy_read = (now, ids)
        return ids

    def views(self, ids: list[str] | None = None) -> list[DeviceView]:
        """The devices ``ids`` (or every device) with their status and what needs attention
        (in a worker thread)."""
        now = self.clock()
        chosen = Device.id.in_(ids) if ids is not None else true()
        with self.store.engine.connect() as db:  # Core rows: 10,000 ORM rows cost ~0.5 s
            warnings = self._warnings(db)
            recent = {  # only the devices over a threshold in the last hour
                device_id: (int(f), int(s)) for device_id, f, s in db.execute(self._noisy(now, ids))
            }
            rows = db.execute(
                select(
                    Device.id,
                    Device.name,
                    Device.group,
                    Device.enabled,
                    Device.revoked,
                    Device.last_seen,
                    Device.offline_after,
                    type_coerce(Device.health, String),  # decoded below, faster
                ).where(chosen)
            ).all()
        out = []
        for r in rows:
            health = as_dict(r[7]) or {}
            fresh = r.last_seen is not None and now - r.last_seen <= r.offline_after
            status = (
                "revoked"
                if r.revoked
                else "disabled"
                if not r.enabled
                else "online"
                if fresh
                else "offline"
            )
            state = str(health.get("state") or "unknown") if fresh else "unknown"
            view = DeviceView(r.id, r.name, r.group, status, state, r.last_seen, health)
            if status == "offline":
                view.attention.append("offline")
            if status == "online" and (state == "error" or health.get("last_error")):
                view.attention.append(f"error: {health.get('last_error') or 'state error'}")
            wakes, interruptions = recent.get(r.id, (0, 0))
            if status != "revoked":
                if wakes > FALSE_WAKES_PER_HOUR:
                    view.attention.append(f"{wakes} false wakes in the last hour")
                if interruptions > SELF_INTERRUPTIONS_PER_HOUR:
                    view.attention.append(f"{interruptions} self-interruptions in the last hour")
                view.attention.extend(warnings.get(r.group, []))
            out.append(view)
        return out

    def summary(self) -> JSON:
        """The counts alone (what the overview's cards and the gauges show; what the live
        feed pushes)."""
        return self.overview(limit=0)

    def overview(
        self, q: str = "", status: str = "", group: str = "", limit: int = 50, offset: int = 0
    ) -> JSON:
        now = self.clock()
        offline = Device.last_seen.is_(None) | (Device.last_seen + Device.offline_after < now)
        status_of = case(
            (Device.revoked, "revoked"),
            (not_(Device.enabled), "disabled"),
            (offline, "offline"),
            else_="online",
        )
        with self.store.engine.connect() as db:
            warned = sorted(self._warnings(db))
            noisy = self.noisy(db, now)
            attention = or_(
                and_(not_(Device.revoked), Device.enabled, offline),
                and_(not_(Device.revoked), Device.enabled, not_(offline), Device.in_error),
                and_(not_(Device.revoked), Device.id.in_(noisy)),
                and_(not_(Device.revoked), Device.group.in_(warned)),
            )
            per = select(
                status_of.label("status"),
                Device.state.label("state"),
                Device.in_error.label("in_error"),
                case((attention, 1), else_=0).label("attention"),
            ).subquery()
            counts = dict.fromkeys(
                ("total", "online", "offline", "error", "muted", "disabled", "revoked"), 0
            )
            states: dict[str, int] = {}
            needing = 0
            for st, state, in_error, attn, n in db.execute(
                select(
                    per.c.status, per.c.state, per.c.in_error, per.c.attention, func.count()
                ).group_by(per.c.status, per.c.state, per.c.in_error, per.c.attention)
            ):
                counts["total"] += n
                counts[st] += n
                needing += n if attn else 0
                if st == "online":
                    states[state or "unknown"] = states.get(state or "unknown", 0) + n
                    counts["error"] += n if in_error else 0
                    counts["muted"] += n if state == "muted" else 0
            where = []
            if q:
                needle = q.lower()
                where.append(
                    or_(
                        *(
                            func.lower(c).contains(needle, autoescape=True)
                            for c in (Device.id, Device.name, Device.group)
                        )
                    )
                )
            if status == "attention":
                where.append(attention)
            elif status:
                where.append(status_of == status)
            if group:
                where.append(Device.group == group)
            matching = (
                int(db.scalar(select(func.count()).select_from(Device).where(*where)) or 0)
                if where
                else counts["total"]
            )
            page: list[str] = []
            if limit > 0:
                rank = case(
                    (status_of == "offline", 0),
                    (status_of == "online", 1),
                    (status_of == "disabled", 2),
                    else_=3,
                )
                page = list(
                    db.scalars(
                        select(Device.id)
                        .where(*where)
                        .order_by(case((attention, 0), else_=1), rank, Device.name, Device.id)
                        .limit(min(limit, MAX_PAGE))
                        .offset(max(0, offset))
                    )
                )
        by_id = {v.id: v for v in self.views(page)} if page else {}
        return {
            "counts": counts,
            "states": dict(sorted(states.items())),
            "attention": needing,
            "matching": matching,
            "offset": max(0, offset),
            "devices": [by_id[i].as_json() for i in page if i in by_id],
            "now": now,
        }

    def next_offline(self) -> float | None:
        """When the next device now online goes offline if it sends nothing (the live feed
        sweeps then)."""
        now = self.clock()
        due = Device.last_seen + Device.offline_after
        with self.store.engine.connect() as db:
            at = db.scalar(
                select(func.min(due)).where(
                    Device.enabled, not_(Device.revoked), Device.last_seen.is_not(None), due >= now
                )
            )
        return None if at is None else float(at)

    def device(self, device_id: str) -> JSON | None:
        view = next(iter(self.views([device_id])), None)
        if view is None:
            return None
        with self.store.session() as db:
            d = db.get_one(Device, device_id)
            g = db.get(Group, d.group)
            trail = db.scalars(
                select(Audit)
                .where(Audit.device_id == device_id, Audit.action != "key.mint")
                .order_by(Audit.id.desc())
                .limit(100)
            ).all()
        profile = (g.profile if g is not None else None) or {}
        return {
            **view.as_json(),
            "health": view.health,
            "created_at": d.created_at,
            "config": {
                "group": d.group,
                "board": view.health.get("board"),
                "model": profile.get("model"),
                "firmware": view.health.get("version"),
                "aec": view.health.get("aec"),
                "heartbeat_s": view.health.get("heartbeat_s"),
                "transcripts": bool(g.report_transcripts) if g is not None else False,
            },
            "key": {
                "previous_until": d.previous_until,
                "rotations": [a.at for a in trail if a.action == "device.rotate"],
                "rotation_requested_at": d.rotate_requested_at,
            },
            "audit": [_audit_json(a) for a in trail],
        }

    def device_history(self, device_id: str, range_: str) -> JSON:
        span, length = RANGES[range_]
        end = int(self.clock())
        start = end - length
        with self.store.session() as db:
            rows = db.scalars(
                select(HeartbeatBucket)
                .where(
                    HeartbeatBucket.device_id == device_id,
                    HeartbeatBucket.span == span,
                    HeartbeatBucket.bucket >= start - span,
                )
                .order_by(HeartbeatBucket.bucket)
            ).all()
        return {"range": range_, "span_s": span, "series": series(rows, span, start, end)}

    def groups(self) -> list[JSON]:
        with self.store.session() as db:
            per_group = select(Device.group, func.count()).group_by(Device.group)
            counts = {str(name): int(n) for name, n in db.execute(per_group)}
            rows = db.scalars(select(Group).order_by(Group.name)).all()
            return [
                {
                    "name": g.name,
                    "model": (g.profile or {}).get("model"),
                    "devices": counts.get(g.name, 0),
                    "transcripts": bool(g.report_transcripts),
                    "limits": g.limits,
                    "model_warnings": [f.as_json() for f in self.lifecycle.findings(g.profile)]
                    if self.lifecycle is not None
                    else [],
                }
                for g in rows
            ]

    def set_transcripts(self, group: str, enabled: bool, who: str) -> bool:
        with self.store.session.begin() as db:
            g = db.get(Group, group)
            if g is None:
                return False
            g.report_transcripts = enabled
            self.store.audit(db, "group.transcripts", group=group, enabled=enabled, admin=who)
        return True

    def tokens(self, group: str = "") -> list[JSON]:
        query = select(EnrollmentToken).order_by(EnrollmentToken.id.desc()).limit(500)
        if group:
            query = query.where(EnrollmentToken.group == group)
        now = self.clock()
        with self.store.session() as db:
            return [
                {
                    "id": t.id,
                    "group": t.group,
                    "label": t.label,
                    "uses": t.uses,
                    "max_uses": t.max_uses,
                    "expires_at": t.expires_at,
                    "usable": t.uses < t.max_uses and t.expires_at > now,
                }
                for t in db.scalars(query)
            ]

    def expire_token(self, token_id: int, who: str) -> bool:
        with self.store.session.begin() as db:
            t = db.get(EnrollmentToken, token_id)
            if t is None:
                return False
            t.expires_at = min(t.expires_at, self.clock())
            self.store.audit(db, "token.expire", group=t.group, token=token_id, admin=who)
        return True

    def audit(self, action: str, device_id: str, before: int | None, limit: int) -> list[JSON]:
        query = select(Audit).order_by(Audit.id.desc()).limit(max(1, min(limit, 1000)))
        if action:
            query = query.where(Audit.action.startswith(action, autoescape=True))
        if device_id:
            query = query.where(Audit.device_id == device_id)
        if before is not None:
            query = query.where(Audit.id < before)
        with self.store.session() as db:
            return [_audit_json(a) for a in db.scalars(query)]


def _audit_json(a: Audit) -> JSON:
    return {
        "id": a.id,
        "at": a.at,
        "action": a.action,
        "device_id": a.device_id,
        "detail": a.detail,
    }


class _Gauges(Collector):
    """Fleet gauges, read from the database at each scrape."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        overview = self.fleet.summary()
        counts = overview["counts"]
        devices = GaugeMetricFamily(
            "provisioning_devices",
            "Devices by status (online, offline, disabled, revoked: each device once)",
            labels=["status"],
        )
        for status in ("online", "offline", "disabled", "revoked"):
            devices.add_metric([status], counts[status])
        yield devices
        yield GaugeMetricFamily(
            "provisioning_devices_in_error",
            "Online devices reporting an error (state error or a last error)",
            value=counts["error"],
        )
        states = GaugeMetricFamily(
            "provisioning_devices_by_state", "Online devices by reported state", labels=["state"]
        )
        for state, n in overview["states"].items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily(
            "provisioning_devices_needing_attention",
            "Devices offline, in error, waking falsely, or on a retiring model",
            value=overview["attention"],
        )


def install(app: FastAPI, fleet: Fleet, flush: Callable[[], Awaitable[None]] | None = None) -> None:
    """Mount the console's page and API (after ``admin.install``: it uses its check)."""
    identity: Callable[[Request], Awaitable[str | Response]] = app.state.admin_identity

    @app.get("/console", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = (resources.files("provisioning") / "static" / "console.html").read_text()
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/console/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            return _error(404, "not_found", "no such file")
        body = (resources.files("provisioning") / "static" / name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})

    @app.get("/v1/admin/fleet", responses=errors(401, 429))
    async def overview(
        request: Request,
        q: str = "",
        status: str = "",
        group: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        if flush is not None:
            await flush()
        body = await run_in_threadpool(fleet.overview, q, status, group, limit, offset)
        return JSONResponse(body)

    @app.get(
        "/v1/admin/console/events",
        responses={**errors(401, 429), 200: {"content": {"text/event-stream": {}}}},
    )
    async def events(request: Request) -> Response:
        """Server-Sent Events: ``fleet`` events with the overview's counts (``counts``,
        ``states``, ``attention``), why they were sent (``reasons``) and the devices that
        changed (``devices``, ``null``: any), first at once, then as the fleet changes."""
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in fleet.feed.listen():
                yield ServerSentEvent(data=to_json(event).decode(), event="fleet", sep="\n")

        return EventSourceResponse(stream(), ping=PING_S, sep="\n")

    app.add_middleware(AdminChanges, feed=fleet.feed)

    @app.get("/v1/admin/devices/{device_id}/detail", responses=errors(401, 404, 429))
    async def detail(device_id: str, request: Request) -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        found = await run_in_threadpool(fleet.device, device_id)
        if found is None:
            return _error(404, "unknown_device", f"no device {device_id!r}")
        return JSONResponse(found)

    @app.get("/v1/admin/devices/{device_id}/history", responses=errors(400, 401, 404, 429))
    async def history(device_id: str, request: Request, range: str = "24h") -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        if range not in RANGES:
            return _error(400, "bad_request", "range is 24h or 7d")
        if flush is not None:
            await flush()
        return JSONResponse(await run_in_threadpool(fleet.device_history, device_id, range))

    @app.get("/v1/admin/console/groups", responses=errors(401, 429))
    async def groups(request: Request) -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        return JSONResponse({"groups": await run_in_threadpool(fleet.groups)})

    @app.put(
        "/v1/admin/groups/{name}/transcripts",
        responses=errors(400, 401, 404, 429),
        openapi_extra=body(TranscriptsRequest),
    )
    async def transcripts(name: str, request: Request) -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        try:
            enabled = (await request.json())["enabled"]
            if not isinstance(enabled, bool):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return _error(400, "bad_request", 'send {"enabled": true|false}')
        if not await run_in_threadpool(fleet.set_transcripts, name, enabled, who):
            return _error(404, "unknown_group", f"no group {name!r}")
        return JSONResponse({"name": name, "transcripts": enabled})

    @app.get("/v1/admin/tokens", responses=errors(401, 429))
    async def tokens(request: Request, group: str = "") -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        return JSONResponse({"tokens": await run_in_threadpool(fleet.tokens, group)})

    @app.post("/v1/admin/tokens/{token_id}/expire", responses=errors(401, 404, 429))
    async def expire(token_id: int, request: Request) -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        if not await run_in_threadpool(fleet.expire_token, token_id, who):
            return _error(404, "unknown_token", f"no token {token_id}")
        return JSONResponse({"id": token_id, "expired": True})

    @app.get("/v1/admin/audit/search", responses=errors(400, 401, 429))
    async def audit(
        request: Request,
        action: str = "",
        device_id: str = "",
        before: int | None = None,
        limit: int = 100,
    ) -> Response:
        who = await identity(request)
        if not isinstance(who, str):  # the admin check's own refusal (401, 429)
            return who
        if flush is not None:
            await flush()
        rows = await run_in_threadpool(fleet.audit, action, device_id, before, limit)
        return JSONResponse({"audit": rows})

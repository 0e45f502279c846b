"""The fleet console: ``/console`` (a static page and its script, uPlot for the plots) and the
admin API it reads: the fleet overview, a device's detail and history, groups' transcript
opt-in, enrollment tokens and a filterable audit log. Fleet gauges for ``/metrics`` too.

Every route here sits behind the admin API's own check (``app.state.admin_identity``, set by
``server/provisioning/admin.py``), with the same ``Authorization: Bearer adm_…`` credential. The
page keeps the credential in ``sessionStorage`` and sends it in that header, never in a
cookie, so a form on another site cannot act with it (no CSRF). Every change is audited.
See docs/console.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import String, func, select, true, type_coerce
from starlette.concurrency import run_in_threadpool

from provisioning.admin import _error
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
DEFAULT_HEARTBEAT_S = 300.0
"""A device that does not say how often it beats is taken to beat this often (the old default)."""
OFFLINE_AFTER_BEATS = 2.5
"""A device is offline once this many of its heartbeat intervals passed without one."""
FALSE_WAKES_PER_HOUR = 3
"""More false wakes than this in the last hour needs attention."""
SELF_INTERRUPTIONS_PER_HOUR = 3
"""More self-interruptions (the device's own voice barging in) than this in the last hour."""
CACHE_S = 2.0
"""How long a read of the whole fleet is reused (the overview polls every 5 s)."""
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


def offline_after(health: JSON) -> float:
    interval = health.get("heartbeat_s")
    if isinstance(interval, int | float) and interval > 0:
        return OFFLINE_AFTER_BEATS * float(interval)
    return OFFLINE_AFTER_BEATS * DEFAULT_HEARTBEAT_S


class Fleet:
    """Reads the fleet for the console and the gauges; holds the heartbeat history hook and
    the counters the ledger feeds."""

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
        self._cached: tuple[float, list[DeviceView]] = (float("-inf"), [])
        """The fleet as last read: consoles polling and scrapes share it for ``CACHE_S``."""
        registry.register(_Gauges(self))

    def forget(self) -> None:
        """Drop the shared read of the fleet: the next one reads the database."""
        with self._lock:
            self._cached = (float("-inf"), [])

    def refused(self, code: str) -> None:
        self.refusals.labels(code).inc()

    def views(self, only: str | None = None) -> list[DeviceView]:
        """Every device (or ``only`` that one) with its status and what needs attention (in
        a worker thread)."""
        now = self.clock()
        if only is None:
            with self._lock:
                if now - self._cached[0] < CACHE_S:
                    return self._cached[1]
        hour = int(now) - 3600
        with self.store.engine.connect() as db:  # Core rows: 10,000 ORM rows cost ~0.5 s
            groups = {
                name: profile or {}
                for name, profile in db.execute(select(Group.name, Group.profile))
            }
            false_wakes = func.sum(HeartbeatBucket.false_wakes)
            self_interruptions = func.sum(HeartbeatBucket.self_interruptions)
            recent = {  # only the devices over a threshold in the last hour
                device_id: (int(f), int(s))
                for device_id, f, s in db.execute(
                    select(HeartbeatBucket.device_id, false_wakes, self_interruptions)
                    .where(HeartbeatBucket.span == 900, HeartbeatBucket.bucket >= hour - 900)
                    .where(HeartbeatBucket.device_id == only if only else true())
                    .group_by(HeartbeatBucket.device_id)
                    .having(
                        (false_wakes > FALSE_WAKES_PER_HOUR)
                        | (self_interruptions > SELF_INTERRUPTIONS_PER_HOUR)
                    )
                )
            }
            rows = db.execute(
                select(
                    Device.id,
                    Device.name,
                    Device.group,
                    Device.enabled,
                    Device.revoked,
                    Device.last_seen,
                    type_coerce(Device.health, String),  # decoded below, faster
                ).where(Device.id == only if only else true())
            ).all()
        warnings: dict[str, list[str]] = {}
        if self.lifecycle is not None:
            for name, profile in groups.items():
                warnings[name] = [
                    f"{f.field} {f.model} "
                    + ("was shut down" if f.retired else f"retires on {f.shutdown}")
                    for f in self.lifecycle.findings(profile)
                ]
        out = []
        for r in rows:
            health = as_dict(r[6]) or {}
            fresh = r.last_seen is not None and now - r.last_seen <= offline_after(health)
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
            if status != "revoked":
                view.attention.extend(warnings.get(r.group, []))
            out.append(view)
        if only is None:
            with self._lock:
                self._cached = (now, out)
        return out

    def overview(
        self, q: str = "", status: str = "", group: str = "", limit: int = 50, offset: int = 0
    ) -> JSON:
        views = self.views()
        counts = dict.fromkeys(
            ("total", "online", "offline", "error", "muted", "disabled", "revoked"), 0
        )
        states: dict[str, int] = {}
        for v in views:
            counts["total"] += 1
            counts[v.status] += 1
            if v.status == "online":
                states[v.state] = states.get(v.state, 0) + 1
                if v.state == "error" or v.health.get("last_error"):
                    counts["error"] += 1
                if v.state == "muted":
                    counts["muted"] += 1
        needle = q.lower()
        chosen = [
            v
            for v in views
            if (not needle or needle in f"{v.id} {v.name} {v.group}".lower())
            and (not status or v.status == status or (status == "attention" and v.attention))
            and (not group or v.group == group)
        ]
        rank = {"offline": 0, "online": 1, "disabled": 2, "revoked": 3}
        chosen.sort(key=lambda v: (not v.attention, rank[v.status], v.name, v.id))
        page = chosen[max(0, offset) : max(0, offset) + max(1, min(limit, 500))]
        return {
            "counts": counts,
            "states": dict(sorted(states.items())),
            "attention": sum(1 for v in views if v.attention),
            "matching": len(chosen),
            "devices": [v.as_json() for v in page],
            "now": self.clock(),
        }

    def device(self, device_id: str) -> JSON | None:
        view = next(iter(self.views(device_id)), None)
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
        overview = self.fleet.overview(limit=1)
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

"""Admin API (``/v1/admin/…``), the dashboard page and Prometheus metrics.

Admin requests carry ``Authorization: Bearer adm_<id>.<secret>`` (stored as an scrypt hash);
device JWTs are refused here. Every admin change is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from provisioning.models import ModelLifecycle
from provisioning.store import Audit, Device, Group, Store

JSON = dict[str, Any]


class Metrics:
    """Per-process counters (run one worker per metrics scrape target, or sum across)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.mints = Counter(
            "provisioning_mints", "Mint requests by outcome", ["outcome"], registry=self.registry
        )
        self.ledger_transactions = Counter(
            "provisioning_ledger_transactions",
            "Database transactions written by the mint ledger (mints are group-committed)",
            registry=self.registry,
        )
        self.enrollments = Counter(
            "provisioning_enrollments",
            "Enrollments by outcome",
            ["outcome"],
            registry=self.registry,
        )


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def device_json(d: Device) -> JSON:
    status = "revoked" if d.revoked else ("enabled" if d.enabled else "disabled")
    return {
        "id": d.id,
        "name": d.name,
        "group": d.group,
        "status": status,
        "created_at": d.created_at,
        "last_seen": d.last_seen,
        "health": d.health,
    }


def install(
    app: FastAPI,
    store: Store,
    metrics: Metrics,
    flush: Callable[[], Awaitable[None]] | None = None,
    lifecycle: ModelLifecycle | None = None,
) -> None:
    """Mount the admin API. ``flush`` writes this process's pending mint records (last seen,
    audit) before the device list and the audit log are read; ``lifecycle`` adds each
    group's model warnings to the group list."""
    router = APIRouter(prefix="/v1/admin")

    async def admin(request: Request) -> str | None:
        """The admin key id behind the request, or ``None``. The credential's scrypt hash
        (tens of ms by design) and every query below run in worker threads: nothing here
        holds up the event loop the devices' requests are served on."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return await run_in_threadpool(store.check_admin, token.strip())

    def denied() -> JSONResponse:
        return _error(401, "admin_required", "an admin credential is required")

    @router.get("/devices")
    async def devices(request: Request) -> Response:
        if await admin(request) is None:
            return denied()
        if flush is not None:
            await flush()

        def read() -> list[dict[str, Any]]:
            with store.session() as db:
                rows = db.scalars(select(Device).order_by(Device.created_at)).all()
                return [device_json(d) for d in rows]

        return JSONResponse({"devices": await run_in_threadpool(read)})

    @router.post("/devices/{device_id}/{action}")
    async def device_action(device_id: str, action: str, request: Request) -> Response:
        who = await admin(request)
        if who is None:
            return denied()
        if action not in ("disable", "enable", "revoke"):
            return _error(404, "unknown_action", f"no action {action!r}")
        if not await run_in_threadpool(store.set_device_state, device_id, action):
            return _error(404, "unknown_device", f"no device {device_id!r}")
        return JSONResponse({"id": device_id, "action": action})

    @router.delete("/devices/{device_id}")
    async def delete_device(device_id: str, request: Request) -> Response:
        if await admin(request) is None:
            return denied()
        if not await run_in_threadpool(store.delete_device, device_id):
            return _error(404, "unknown_device", f"no device {device_id!r}")
        return Response(status_code=204)

    @router.post("/tokens", status_code=201)
    async def tokens(request: Request) -> Response:
        if await admin(request) is None:
            return denied()
        try:
            body = await request.json()
            group = str(body.get("group", "default"))
            uses, ttl = int(body.get("uses", 1)), float(body.get("ttl_s", 86400))
            if not (1 <= uses <= 100_000 and 60 <= ttl <= 90 * 86400):
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            return _error(400, "bad_request", "uses 1–100000, ttl_s 60 s – 90 days, group")
        label = str(body.get("label", ""))[:128]
        try:
            token = await run_in_threadpool(store.create_token, group, uses, ttl, label)
        except KeyError:
            return _error(404, "unknown_group", f"no group {group!r}")
        return JSONResponse({"token": token, "group": group, "uses": uses}, status_code=201)

    @router.get("/groups")
    async def groups(request: Request) -> Response:
        if await admin(request) is None:
            return denied()

        def read() -> list[dict[str, Any]]:
            with store.session() as db:
                rows = db.scalars(select(Group)).all()
                return [
                    {
                        "name": g.name,
                        "profile": g.profile,
                        "limits": g.limits,
                        "model_warnings": [f.as_json() for f in lifecycle.findings(g.profile or {})]
                        if lifecycle is not None
                        else [],
                    }
                    for g in rows
                ]

        return JSONResponse({"groups": await run_in_threadpool(read)})

    @router.put("/groups/{name}")
    async def put_group(name: str, request: Request) -> Response:
        if await admin(request) is None:
            return denied()
        try:
            body = await request.json()
            profile, limits = body.get("profile"), body.get("limits")
            if profile is not None and (not isinstance(profile, dict) or "type" not in profile):
                raise ValueError
            if limits is not None and not all(
                isinstance(v, int) and v > 0 for v in limits.values()
            ):
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            return _error(400, "bad_request", "profile must be a session object with a type")
        saved = await run_in_threadpool(store.ensure_group, name[:64], profile, limits)
        found = lifecycle.findings(saved.profile or {}) if lifecycle is not None else []
        return JSONResponse({"name": name, "model_warnings": [f.as_json() for f in found]})

    @router.delete("/groups/{name}")
    async def delete_group(name: str, request: Request) -> Response:
        if await admin(request) is None:
            return denied()
        outcome = await run_in_threadpool(store.delete_group, name)
        if outcome == "missing":
            return _error(404, "unknown_group", f"no group {name!r}")
        if outcome == "in_use":
            return _error(409, "group_in_use", "move or delete its devices first")
        return Response(status_code=204)

    @router.get("/audit")
    async def audit(request: Request, limit: int = 100) -> Response:
        if await admin(request) is None:
            return denied()
        if flush is not None:
            await flush()

        def read() -> list[dict[str, Any]]:
            newest = select(Audit).order_by(Audit.id.desc()).limit(max(1, min(limit, 1000)))
            with store.session() as db:
                return [
                    {"at": a.at, "action": a.action, "device_id": a.device_id, "detail": a.detail}
                    for a in db.scalars(newest)
                ]

        return JSONResponse({"audit": await run_in_threadpool(read)})

    app.include_router(router)
    app.state.admin_identity = admin  # the console's routes use the same check

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        # in a thread: a collector reads the groups from the database
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        page = resources.files("provisioning") / "dashboard.html"
        return HTMLResponse(page.read_text(), headers={"Cache-Control": "no-store"})

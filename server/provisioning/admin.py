"""Admin API (``/v1/admin/…``), the dashboard page and Prometheus metrics.

Admin requests carry ``Authorization: Bearer adm_<id>.<secret>`` (stored as an scrypt hash);
device JWTs are refused here. Every admin change is written to the audit log with the admin
key that made it; refused credentials are audited too (the reason, never the credential).

A credential's scrypt check (tens of ms, on purpose) is what an attacker could make the server
do at will, so the checks that run it are rate limited (the ``limits`` package, in memory, per
process): ``ADMIN_CHECKS_PER_CLIENT`` per client address and ``ADMIN_CHECKS`` in all. A
credential that passed is remembered for ``REMEMBER_S`` (as a SHA-256 of it), so an admin at
work costs one scrypt in that time and is not locked out by someone else's guessing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic_core import from_json
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from provisioning.live_relay import LIVE, backend_of, check_live_profile
from provisioning.models import ModelLifecycle
from provisioning.schema import ADMIN_KEY, GroupRequest, TokenRequest, body, errors
from provisioning.store import Audit, Device, Group, Store

log = logging.getLogger(__name__)

ADMIN_CHECKS_PER_CLIENT = parse("20/minute")
ADMIN_CHECKS = parse("60/minute")
REMEMBER_S = 300.0


class AdminGate:
    """Who an admin credential belongs to, with the checks rate limited and passed ones
    remembered (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self._known: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def check(self, credential: str, client: str) -> str | tuple[str, float]:
        """The admin key id, or ``(reason, retry_after)``: ``refused`` (a wrong credential)
        or ``locked`` (too many checks; none was run). In a worker thread."""
        digest = hashlib.sha256(credential.encode("utf-8", "replace")).digest()
        now = time.monotonic()
        with self._lock:
            known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        for item, *who in ((ADMIN_CHECKS_PER_CLIENT, "client", client), (ADMIN_CHECKS, "all")):
            if not self.limiter.hit(item, *who):
                return "locked", self._retry_after(item, *who)
        key_id = self.store.check_admin(credential)
        if key_id is None:
            return "refused", 0.0
        with self._lock:
            if len(self._known) > 1000:
                self._known.clear()
            self._known[digest] = (key_id, now + REMEMBER_S)
        return key_id

    def _retry_after(self, item: RateLimitItem, *who: str) -> float:
        reset, _remaining = self.limiter.get_window_stats(item, *who)
        return max(1.0, reset - time.time())


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
    router = APIRouter(prefix="/v1/admin", dependencies=ADMIN_KEY)
    gate = AdminGate(store)

    async def admin(request: Request) -> str | JSONResponse:
        """The admin key id behind the request, or the response refusing it. The
        credential's scrypt hash (tens of ms by design) and every query below run in worker
        threads: nothing here holds up the event loop the devices' requests are served on."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "admin_required", "an admin credential is required")
        client = request.client.host if request.client else "-"
        outcome = await run_in_threadpool(gate.check, token.strip(), client)
        if isinstance(outcome, str):
            return outcome
        reason, retry_after = outcome
        log.warning("admin credential %s (client %s)", reason, client)
        if reason == "locked":
            response = _error(429, "admin_locked", "too many admin credential checks")
            response.headers["Retry-After"] = str(round(retry_after))
            return response
        await run_in_threadpool(_audit_refusal, store, client)
        return _error(401, "admin_required", "an admin credential is required")

    @router.get("/devices", responses=errors(401, 429))
    async def devices(request: Request) -> Response:
        who = await admin(request)
        if isinstance(who, Response):
            return who
        if flush is not None:
            await flush()

        def read() -> list[dict[str, Any]]:
            with store.session() as db:
                rows = db.scalars(select(Device).order_by(Device.created_at)).all()
                return [device_json(d) for d in rows]

        return JSONResponse({"devices": await run_in_threadpool(read)})

    @router.post("/devices/{device_id}/{action}", responses=errors(401, 404, 409, 429))
    async def device_action(device_id: str, action: str, request: Request) -> Response:
        """``disable``, ``enable``, ``revoke``, or ``rotate``: ask the device to make a new
        key (it does at its next heartbeat)."""
        who = await admin(request)
        if isinstance(who, Response):
            return who
        if action == "rotate":  # the device makes its new key at its next heartbeat
            outcome = await run_in_threadpool(store.request_rotation, device_id, who)
            if outcome == "revoked":
                return _error(409, "device_revoked", "a revoked device has no key to rotate")
            if outcome == "missing":
                return _error(404, "unknown_device", f"no device {device_id!r}")
            return JSONResponse({"id": device_id, "action": action})
        if action not in ("disable", "enable", "revoke"):
            return _error(404, "unknown_action", f"no action {action!r}")
        if not await run_in_threadpool(store.set_device_state, device_id, action, who):
            return _error(404, "unknown_device", f"no device {device_id!r}")
        return JSONResponse({"id": device_id, "action": action})

    @router.delete("/devices/{device_id}", status_code=204, responses=errors(401, 404, 429))
    async def delete_device(device_id: str, request: Request) -> Response:
        who = await admin(request)
        if isinstance(who, Response):
            return who
        if not await run_in_threadpool(store.delete_device, device_id, who):
            return _error(404, "unknown_device", f"no device {device_id!r}")
        return Response(status_code=204)

    @router.post(
        "/tokens",
        status_code=201,
        responses=errors(400, 401, 404, 429),
        openapi_extra=body(TokenRequest),
    )
    async def tokens(request: Request) -> Response:
        who = await admin(request)
        if isinstance(who, Response):
            return who
        try:
            body = from_json(await request.body())  # nesting bounded
            group = str(body.get("group", "default"))
            uses, ttl = int(body.get("uses", 1)), float(body.get("ttl_s", 86400))
            if not (1 <= uses <= 100_000 and 60 <= ttl <= 90 * 86400):
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            return _error(400, "bad_request", "uses 1–100000, ttl_s 60 s – 90 days, group")
        label = str(body.get("label", ""))[:128]
        try:
            token = await run_in_threadpool(store.create_token, group, uses, ttl, label, who)
        except KeyError:
            return _error(404, "unknown_group", f"no group {group!r}")
        return JSONResponse({"token": token, "group": group, "uses": uses}, status_code=201)

    @router.get("/groups", responses=errors(401, 429))
    async def groups(request: Request) -> Response:
        who = await admin(request)
        if isinstance(who, Response):
            return who

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

    @router.put("/groups/{name}", responses=errors(400, 401, 429), openapi_extra=body(GroupRequest))
    async def put_group(name: str, request: Request) -> Response:
        who = await admin(request)
        if isinstance(who, Response):
            return who
        try:
            body = from_json(await request.body())  # nesting bounded
            profile, limits = body.get("profile"), body.get("limits")
            if profile is not None and (not isinstance(profile, dict) or "type" not in profile):
                raise ValueError
            if limits is not None and not all(
                isinstance(v, int) and v > 0 for v in limits.values()
            ):
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            return _error(400, "bad_request", "profile must be a session object with a type")
        if profile is not None and backend_of(profile) == LIVE:
            try:
                check_live_profile(profile)
            except ValueError as exc:
                return _error(400, "bad_request", f"Live profile: {exc}")
        saved = await run_in_threadpool(store.ensure_group, name[:64], profile, limits, who)
        found = lifecycle.findings(saved.profile or {}) if lifecycle is not None else []
        return JSONResponse({"name": name, "model_warnings": [f.as_json() for f in found]})

    @router.delete("/groups/{name}", status_code=204, responses=errors(401, 404, 409, 429))
    async def delete_group(name: str, request: Request) -> Response:
        who = await admin(request)
        if isinstance(who, Response):
            return who
        outcome = await run_in_threadpool(store.delete_group, name, who)
        if outcome == "missing":
            return _error(404, "unknown_group", f"no group {name!r}")
        if outcome == "in_use":
            return _error(409, "group_in_use", "move or delete its devices first")
        return Response(status_code=204)

    @router.get("/audit", responses=errors(401, 429))
    async def audit(request: Request, limit: int = 100) -> Response:
        who = await admin(request)
        if isinstance(who, Response):
            return who
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

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        # in a thread: a collector reads the groups from the database
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    page = (resources.files("provisioning") / "dashboard.html").read_text()
    headers = {"Cache-Control": "no-store", **security_headers(page)}

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)


def security_headers(page: str) -> dict[str, str]:
    """Headers for an HTML page: a Content-Security-Policy that allows only the page's own
    inline script and style (by hash) and requests to this server, no framing, no sniffing."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
            for b in blocks
        )

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _audit_refusal(store: Store, client: str) -> None:
    with store.session.begin() as db:
        store.audit(db, "admin.refused", client=client)

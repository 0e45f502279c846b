"""The provisioning server: the only place the real OpenAI key lives.

Devices enroll once with a token (their Ed25519 public key is stored), then authenticate each
request with a short EdDSA JWT and receive ephemeral Realtime keys minted upstream with their
group's session profile. See docs/contracts.md for the wire contract.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, from_json, to_json
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Scope

from appliance_common.models import DEFAULT_MODEL
from appliance_common.serving import MAX_ADMIN_BODY, FastPath, Reply, Served, header
from provisioning import admin, console, live_relay, schema
from provisioning.admin import Metrics
from provisioning.auth import AuthError, bearer_kid, public_key_ok
from provisioning.ledger import Admitted, MintLedger, Refused
from provisioning.models import ModelLifecycle, ModelWatch
from provisioning.refusals import error_reply, refusal, refused_early
from provisioning.schema import DEVICE_JWT, EnrollRequest, RotateRequest, errors, name_ok
from provisioning.store import Enrolled, Store, hash_token
from provisioning.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///provisioning.db"
    upstream_url: str = "https://api.openai.com"
    """Where ``client_secrets`` is called; the stand-in's URL in the demo and tests."""
    openai_api_key: str = field(default="", repr=False)
    """The standard key. Never logged, never returned."""
    realtime_base: str = ""
    """Realtime base URL handed to devices (default: ``upstream_url``)."""
    key_ttl_s: int = 60
    rotation_overlap_s: float = 86400.0
    """After a key rotation the old device key keeps working this long."""
    host: str = "127.0.0.1"
    port: int = 8080
    model_shutdown_dates: Mapping[str, dt.date | None] = field(default_factory=dict)
    """Shutdown dates that override the built-in table and the upstream's (docs/models.md)."""
    model_warn_days: int = 60
    """Warn about groups whose model shuts down within this many days."""
    retired_model: str = "substitute"
    """A mint for a model past its shutdown date: ``substitute`` its replacement, or
    ``refuse`` (503 ``model_retired``)."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        key = env.get("PROVISIONING_OPENAI_API_KEY", "")
        key_file = env.get("PROVISIONING_OPENAI_API_KEY_FILE") or (
            str(Path(env["CREDENTIALS_DIRECTORY"]) / "openai-api-key")
            if "CREDENTIALS_DIRECTORY" in env
            else ""
        )
        if not key and key_file and Path(key_file).exists():
            key = Path(key_file).read_text().strip()
        models = ModelLifecycle.from_env(env)  # SettingsError names a bad variable
        return cls(
            database_url=env.get("PROVISIONING_DATABASE_URL", cls.database_url),
            upstream_url=env.get("PROVISIONING_UPSTREAM_URL", cls.upstream_url),
            openai_api_key=key,
            realtime_base=env.get("PROVISIONING_REALTIME_BASE", ""),
            key_ttl_s=int(env.get("PROVISIONING_KEY_TTL_S", cls.key_ttl_s)),
            model_shutdown_dates=models.overrides,
            model_warn_days=models.warn_days,
            retired_model=models.policy,
        )

    def lifecycle(self, clock: Callable[[], float] = time.time) -> ModelLifecycle:
        """The model lifecycle these settings describe, judged against ``clock``."""
        return ModelLifecycle(
            self.model_shutdown_dates, self.model_warn_days, self.retired_model, clock
        )


def error(status: int, code: str, message: str, retry_after: float | None = None) -> Response:
    return error_reply(status, code, message, retry_after).response()


MODEL_RETIRED_RETRY_S = 300.0
"""Retry-After of a mint refused because the group's model was shut down."""


HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def allowed_methods(openapi: dict[str, Any], path: str) -> list[str]:
    """The methods the schema documents for ``path`` (``Allow`` of a 405). Read off the
    schema rather than the router: FastAPI may keep an included router's routes to itself."""
    found: dict[int, set[str]] = {}  # by how many parameters the template has
    for template, operations in openapi.get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods = found.setdefault(template.count("{"), set())
            methods |= {m.upper() for m in operations if m in HTTP_METHODS}
    return sorted(found[min(found)]) if found else []  # the most specific template wins


HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
ENROLL_REFUSALS = {
    "unknown_token": (401, "invalid_token", "unknown enrollment token"),
    "token_expired": (410, "token_expired", "this enrollment token has expired"),
    "token_used": (409, "token_used", "this enrollment token has already been used"),
    "key_in_use": (409, "key_in_use", "this public key belongs to another device"),
    "name_taken": (409, "name_taken", "a device with this name exists: enroll with another --name"),
}
ROTATE_REFUSALS = {
    "key_in_use": (409, "key_in_use", "this public key is in use"),
    "conflict": (409, "rotation_conflict", "the device's key changed meanwhile"),
}


ROTATE_KEY = b'{"rotate_key":true}'
"""A heartbeat's reply when an admin asked the device to rotate its key (else 204)."""

WAL_CHECKPOINT_EVERY_S = 0.1
"""How often the server checkpoints a SQLite WAL, off the hot path (see ``Checkpointer``)."""


def server_store(url: str) -> Store:
    """The server's database: on SQLite its commits leave checkpoints to a thread."""
    return Store(url, checkpoint_every_s=WAL_CHECKPOINT_EVERY_S)


def app_from_env() -> ASGIApp:
    """The app for each worker of ``provisioning serve --workers N`` (settings from the
    environment, like the single-process server)."""
    return serve_app(Settings.from_env())


def serve_app(settings: Settings) -> ASGIApp:
    """What to hand uvicorn: ``create_app(settings)`` behind its fast path. Everything built
    so far (modules, the app, its schema) is then frozen out of the garbage collector's view:
    a full collection walked it all, a pause of every request once in a while (docs/server.md)."""
    asgi: ASGIApp = create_app(settings).state.asgi
    gc.collect()
    gc.freeze()
    return asgi


def create_app(
    settings: Settings, store: Store | None = None, clock: Callable[[], float] = time.time
) -> FastAPI:
    """The app; ``clock`` is what the model lifecycle guard calls today (tests inject it)."""
    owns_store = store is None
    store = store or server_store(settings.database_url)
    upstream = Upstream(settings.upstream_url, settings.openai_api_key, settings.key_ttl_s)
    metrics = Metrics()
    models = ModelWatch(store, settings.lifecycle(clock), upstream, metrics.registry)
    fleet = console.Fleet(store, metrics.registry, models.lifecycle)
    ledger = MintLedger(
        store,
        on_transaction=metrics.ledger_transactions.inc,
        history=fleet.history,
        on_refused=fleet.refused,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        models.start()
        yield
        await shutdown(_app)

    app = FastAPI(
        title="Appliance provisioning server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # no HTML pages from a CDN: the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.store = store
    app.state.owns_store = owns_store
    app.state.upstream = upstream
    app.state.ledger = ledger
    app.state.metrics = metrics
    app.state.models = models
    app.state.fleet = fleet
    store.ensure_group("default")
    admin.install(app, store, metrics, flush=ledger.flush, lifecycle=models.lifecycle)
    app.state.live_upstream = live_relay.LiveUpstream(
        settings.upstream_url, settings.openai_api_key
    )
    live_relay.install(app, ledger, app.state.live_upstream)  # POST /v1/live/sessions
    console.install(app, fleet, flush=ledger.flush)

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, exc: AuthError) -> Response:
        return refusal(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """The framework's own refusals (no such path, method) in the server's error shape;
        a 405's ``Allow`` lists every method of the path, not only its first route's."""
        response = error(
            exc.status_code, HTTP_CODES.get(exc.status_code, "bad_request"), exc.detail
        )
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(allowed_methods(app.openapi(), request.url.path))
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/v1/devices/enroll",
        status_code=201,
        response_model=schema.Enrolled,
        responses=errors(400, 401, 409, 410),
        openapi_extra=schema.body(EnrollRequest),
    )
    async def enroll(request: Request) -> Response:
        """Register a device's public key with an enrollment token. A retry with the same
        token and key gets the same device (201 again, nothing used)."""
        try:
            req = EnrollRequest.model_validate_json(await request.body())
        except ValidationError:
            return error(
                400,
                "bad_request",
                "need token, public_key (base64url Ed25519) and name (1-64 printable characters)",
            )
        if not (public_key_ok(req.public_key) and name_ok(req.name)):
            # the token is the credential: an unknown one is said first
            if await run_in_threadpool(store.token_state, hash_token(req.token)) is None:
                return error(*ENROLL_REFUSALS["unknown_token"])
            return error(
                400,
                "bad_request",
                "need a valid Ed25519 public_key (canonical base64url) and a printable name",
            )
        name = req.name.strip()
        outcome = await run_in_threadpool(store.enroll, req.token, req.public_key, name)
        if not isinstance(outcome, Enrolled):
            metrics.enrollments.labels("refused").inc()
            if outcome == "name_taken":
                message = f"a device named {name!r} exists: enroll with another --name"
                return error(409, "name_taken", message)
            return error(*ENROLL_REFUSALS[outcome])
        log.info(
            "device %s %s in group %s",
            outcome.device_id,
            "enrolled" if outcome.created else "enrolled again (a retry)",
            outcome.group,
            extra={"device_id": outcome.device_id, "group": outcome.group},
        )
        metrics.enrollments.labels("ok" if outcome.created else "retry").inc()
        fleet.feed.changed("enroll", outcome.device_id)
        body = {"device_id": outcome.device_id, "group": outcome.group}
        return JSONResponse(body, status_code=201)

    minted_ok, minted_limited, minted_upstream_error, minted_database_unavailable = (
        metrics.mints.labels(outcome)
        for outcome in ("ok", "limited", "upstream_error", "database_unavailable")
    )

    async def mint(scope: Scope, _body: bytes) -> Reply:
        """Mint an ephemeral Realtime key for the device whose JWT signs the request."""
        try:
            token, kid = bearer_kid(header(scope, b"authorization"))
        except AuthError as exc:
            return refused_early(exc)
        admitted = await ledger.admit(token, kid)
        if isinstance(admitted, Refused):
            if admitted.status == 429:
                minted_limited.inc()
            elif admitted.status == 503:
                minted_database_unavailable.inc()
            return refusal(admitted)
        guarded = models.guard(admitted.group, admitted.profile)
        if guarded.refused is not None:
            ledger.refund(admitted)  # no key, so not counted against the device's limits
            ledger.record("key.mint", admitted.device_id, outcome="model_retired")
            return error_reply(
                503,
                "model_retired",
                f"the group's {guarded.refused.field} {guarded.refused.model} was shut down "
                f"on {guarded.refused.shutdown}; the operator must move the group",
                retry_after=MODEL_RETIRED_RETRY_S,
            )
        moved = live_relay.wrong_backend_reply(admitted.profile)
        if moved is not None:  # the group uses GPT-Live: no ephemeral keys there
            return error_reply(*moved)
        try:
            minted = await upstream.mint(admitted.device_id, guarded.profile)
        except UpstreamError as exc:
            ledger.refund(admitted)  # no key, so not counted against the device's limits
            minted_upstream_error.inc()
            ledger.record(
                "key.mint", admitted.device_id, outcome="upstream_error", status=exc.status
            )
            return error_reply(
                503,
                "upstream_unavailable",
                "the Realtime service is unavailable",
                retry_after=exc.retry_after,
            )
        ledger.record(
            "key.mint", admitted.device_id, outcome="ok", upstream_request_id=minted.request_id
        )
        minted_ok.inc()
        body = {
            "value": minted.value,
            "expires_at": minted.expires_at,
            "session": minted.session,
            "realtime_base": realtime_base,
        }
        return Reply(200, to_json(body))  # pydantic-core: a fifth of json's time

    realtime_base = settings.realtime_base or settings.upstream_url
    app.post(
        "/v1/realtime/keys",
        response_model=schema.MintedKey,
        responses=errors(401, 429, 503),
        openapi_extra=schema.body(None),
        dependencies=DEVICE_JWT,
    )(FastPath.endpoint(mint))

    async def device(authorization: str, health: dict[str, Any] | None = None) -> Admitted:
        """The device whose JWT signs a request (not a mint), through the ledger like every
        device JWT; ``AuthError`` if it is refused."""
        try:
            token, kid = bearer_kid(authorization)
        except AuthError as exc:
            refused_early(exc)
            raise
        outcome = await ledger.authenticate(token, kid, health)
        if isinstance(outcome, Refused):
            raise AuthError(outcome.status, outcome.code, outcome.message, outcome.server_time)
        return outcome

    @app.post(
        "/v1/devices/rotate",
        response_model=schema.Rotated,
        responses=errors(400, 401, 403, 409, 503),
        openapi_extra=schema.body(RotateRequest),
        dependencies=DEVICE_JWT,
    )
    async def rotate(request: Request) -> Response:
        """Register a new public key, proven by a JWT signed with the device's current key
        (a superseded key still valid in its overlap may authenticate, never rotate)."""
        try:
            who = await device(request.headers.get("authorization", ""))
        except AuthError as exc:
            return refusal(exc).response()
        if not who.current:
            return error(403, "key_superseded", "only the device's current key can rotate it")
        try:
            new_key = RotateRequest.model_validate_json(await request.body()).public_key
            if not public_key_ok(new_key):
                raise ValueError
        except (ValidationError, ValueError):
            return error(400, "bad_public_key", "need public_key: a valid Ed25519 key, base64url")
        overlap_until = time.time() + settings.rotation_overlap_s
        outcome = await run_in_threadpool(
            store.rotate, who.device_id, who.key, new_key, overlap_until
        )
        if outcome != "rotated":
            return error(*ROTATE_REFUSALS[outcome])
        fleet.feed.changed("rotate", who.device_id)
        return JSONResponse({"device_id": who.device_id, "overlap_until": overlap_until})

    async def heartbeat(scope: Scope, body: bytes) -> Reply:
        """Store the device's health report (version, uptime, counts) and its last-seen time.
        204, or 200 ``{"rotate_key": true}`` when an admin asked the device for a new key."""
        try:
            report = from_json(body or b"{}")  # nesting is bounded by pydantic-core
            if not isinstance(report, dict):
                raise ValueError
            to_json(report)  # lone surrogates cannot be stored
        except (ValueError, PydanticSerializationError):
            return error_reply(400, "bad_request", "the report must be a JSON object")
        try:
            who = await device(header(scope, b"authorization"), report)
        except AuthError as exc:
            return refusal(exc)
        fleet.feed.changed("heartbeat", who.device_id)
        if who.rotate:  # an admin asked for a new key: the device rotates it now
            return Reply(200, ROTATE_KEY)
        return Reply(204, b"")

    app.post(
        "/v1/devices/heartbeat",
        status_code=204,
        responses={**errors(400, 401, 503), 200: {"model": schema.HeartbeatReply}},
        openapi_extra=schema.body(None),
        dependencies=DEVICE_JWT,
    )(FastPath.endpoint(heartbeat))
    # what uvicorn serves: the device routes a fleet calls all day go straight to their
    # handlers in ASGI (see FastPath)
    fast = {("POST", "/v1/realtime/keys"): mint, ("POST", "/v1/devices/heartbeat"): heartbeat}
    bodies = {
        "/v1/admin/": MAX_ADMIN_BODY,
        "/v1/live/": schema.MAX_OFFER_BYTES + live_relay.MAX_TOOLS_BYTES,
    }
    app.state.asgi = FastPath(app, fast, bodies=bodies)

    return app


async def shutdown(app: FastAPI) -> None:
    """Write the ledger's pending audit rows, close the upstream client, and the database if
    ``create_app`` opened it (a last WAL checkpoint)."""
    await app.state.fleet.feed.close()
    await app.state.models.stop()
    await app.state.ledger.close()
    await app.state.upstream.close()
    await app.state.live_upstream.close()
    if app.state.owns_store:
        app.state.store.close()


class ProvisioningServer:
    """Serves ``create_app(settings)`` with uvicorn on the running loop (tests, demo)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = server_store(settings.database_url)
        self.app = create_app(settings, self.store, clock)
        self._served = Served(self.app.state.asgi, settings.host, settings.port)

    @property
    def base_url(self) -> str:
        return self._served.base_url

    async def __aenter__(self) -> ProvisioningServer:
        await self._served.start()
        self.app.state.models.start()  # what the lifespan does under `provisioning serve`
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.app.state.fleet.feed.close()  # open consoles' streams end first
        await self._served.stop()
        await shutdown(self.app)
        self.store.close()


def profile_for(
    voice: str = "marin", instructions: str = "", tools: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A group profile: the session config minted into every key of the group."""
    session: dict[str, Any] = {
        "type": "realtime",
        "model": DEFAULT_MODEL,
        "audio": {"output": {"voice": voice}},
    }
    if instructions:
        session["instructions"] = instructions
    if tools is not None:
        session["tools"] = tools
    return session

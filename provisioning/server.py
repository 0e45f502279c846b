"""The provisioning server: the only place the real OpenAI key lives.

Devices enroll once with a token (their Ed25519 public key is stored), then authenticate each
request with a short EdDSA JWT and receive ephemeral Realtime keys minted upstream with their
group's session profile. See docs/contracts.md for the wire contract.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from provisioning import admin
from provisioning.admin import Metrics
from provisioning.serving import Served
from provisioning.store import (
    Device,
    EnrollmentToken,
    Group,
    LimitExceeded,
    Store,
    hash_token,
)
from provisioning.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)
AUDIENCE = "appliance-provisioning"
MAX_JWT_LIFETIME_S = 60


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
        return cls(
            database_url=env.get("PROVISIONING_DATABASE_URL", cls.database_url),
            upstream_url=env.get("PROVISIONING_UPSTREAM_URL", cls.upstream_url),
            openai_api_key=key,
            realtime_base=env.get("PROVISIONING_REALTIME_BASE", ""),
            key_ttl_s=int(env.get("PROVISIONING_KEY_TTL_S", cls.key_ttl_s)),
        )


def error(status: int, code: str, message: str, retry_after: float | None = None) -> JSONResponse:
    response = JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def app_from_env() -> FastAPI:
    """The app for each worker of ``provisioning serve --workers N`` (settings from the
    environment, like the single-process server)."""
    return create_app(Settings.from_env())


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    store = store or Store(settings.database_url)
    upstream = Upstream(settings.upstream_url, settings.openai_api_key, settings.key_ttl_s)
    app = FastAPI(title="Appliance provisioning server", version="0.1.0")
    app.state.store = store
    app.state.upstream = upstream
    metrics = Metrics()
    app.state.metrics = metrics
    store.ensure_group("default")
    admin.install(app, store, metrics)

    def authenticate(request: Request) -> Device:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "missing_credentials", "a device JWT is required")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "bad_token", "malformed JWT") from None
        if header.get("alg") != "EdDSA":
            raise AuthError(401, "bad_token", "JWT must be signed with EdDSA")
        with store.session() as db:
            device = db.get(Device, str(header.get("kid", "")))
        if device is None or device.revoked:
            raise AuthError(401, "unknown_device", "unknown or revoked device")
        keys = [device.public_key]
        if device.previous_key and (device.previous_until or 0) > time.time():
            keys.append(device.previous_key)  # rotation overlap: the old key still works
        claims: dict[str, Any] | None = None
        failure = "InvalidSignatureError"
        for key in keys:
            public = Ed25519PublicKey.from_public_bytes(_b64d(key))
            try:
                claims = jwt.decode(
                    token,
                    public,
                    algorithms=["EdDSA"],
                    audience=AUDIENCE,
                    options={"require": ["exp", "iat", "jti", "sub"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                failure = type(exc).__name__
                break
        if claims is None:
            raise AuthError(401, "bad_token", f"JWT rejected: {failure}")
        if claims["sub"] != device.id or claims["exp"] - claims["iat"] > MAX_JWT_LIFETIME_S:
            raise AuthError(401, "bad_token", "JWT subject or lifetime not allowed")
        if not store.use_jti(str(claims["jti"]), float(claims["exp"])):
            raise AuthError(401, "replayed_token", "JWT already used")
        if not device.enabled:
            raise AuthError(403, "device_disabled", "device is disabled")
        return device

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, exc: AuthError) -> JSONResponse:
        return error(exc.status, exc.code, str(exc))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/devices/enroll", status_code=201)
    async def enroll(request: Request) -> Response:
        try:
            body = await request.json()
            token, public_key = str(body["token"]), str(body["public_key"])
            name = str(body.get("name") or "device")[:128]
            if len(_b64d(public_key)) != 32:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return error(400, "bad_request", "need token, public_key (base64url Ed25519) and name")
        now = time.time()
        with store.session.begin() as db:
            row = db.scalars(
                select(EnrollmentToken)
                .where(EnrollmentToken.token_hash == hash_token(token))
                .with_for_update()
            ).first()
            if row is None:
                return error(401, "invalid_token", "unknown enrollment token")
            if row.expires_at < now:
                return error(410, "token_expired", "this enrollment token has expired")
            if row.uses >= row.max_uses:
                return error(409, "token_used", "this enrollment token has already been used")
            row.uses += 1
            device = Device(
                id="dev_" + secrets.token_hex(8),
                name=name,
                group=row.group,
                public_key=public_key,
                created_at=now,
            )
            db.add(device)
            store.audit(db, "device.enroll", device.id, name=name, group=row.group)
        log.info("device %s enrolled in group %s", device.id, device.group)
        metrics.enrollments.labels("ok").inc()
        return JSONResponse({"device_id": device.id, "group": device.group}, status_code=201)

    @app.post("/v1/realtime/keys")
    async def mint(request: Request) -> Response:
        device = authenticate(request)
        try:
            store.reserve_mint(device.id, device.group, time.time())
        except LimitExceeded as exc:
            with store.session.begin() as db:
                store.audit(db, "key.mint", device.id, outcome="limited", limit=str(exc))
            metrics.mints.labels("limited").inc()
            return error(429, "rate_limited", f"limit reached: {exc}", retry_after=exc.retry_after)
        with store.session() as db:
            group = db.get(Group, device.group)
            profile = dict(group.profile) if group else {"type": "realtime"}
        try:
            minted = await upstream.mint(device.id, profile)
        except UpstreamError as exc:
            metrics.mints.labels("upstream_error").inc()
            with store.session.begin() as db:
                store.audit(db, "key.mint", device.id, outcome="upstream_error", status=exc.status)
            return error(
                503,
                "upstream_unavailable",
                "the Realtime service is unavailable",
                retry_after=exc.retry_after,
            )
        with store.session.begin() as db:
            store.audit(
                db,
                "key.mint",
                device.id,
                outcome="ok",
                upstream_request_id=minted.get("_request_id", ""),
            )
            db.get_one(Device, device.id).last_seen = time.time()
        metrics.mints.labels("ok").inc()
        return JSONResponse(
            {
                "value": minted["value"],
                "expires_at": minted["expires_at"],
                "session": minted.get("session", {}),
                "realtime_base": settings.realtime_base or settings.upstream_url,
            }
        )

    @app.post("/v1/devices/rotate")
    async def rotate(request: Request) -> Response:
        """Register a new public key, proven by a JWT signed with the current one."""
        device = authenticate(request)
        try:
            body = await request.json()
            new_key = str(body["public_key"])
            if len(_b64d(new_key)) != 32:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return error(400, "bad_request", "need public_key (base64url raw Ed25519)")
        overlap_until = time.time() + settings.rotation_overlap_s
        with store.session.begin() as db:
            row = db.get_one(Device, device.id)
            row.previous_key, row.previous_until = row.public_key, overlap_until
            row.public_key = new_key
            store.audit(db, "device.rotate", device.id)
        return JSONResponse({"device_id": device.id, "overlap_until": overlap_until})

    @app.post("/v1/devices/heartbeat", status_code=204)
    async def heartbeat(request: Request) -> Response:
        device = authenticate(request)
        body = await request.json()
        with store.session.begin() as db:
            row = db.get_one(Device, device.id)
            row.last_seen = time.time()
            row.health = body if isinstance(body, dict) else {}
        return Response(status_code=204)

    return app


def _b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class ProvisioningServer:
    """Serves ``create_app(settings)`` with uvicorn on the running loop (tests, demo)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.database_url)
        self.app = create_app(settings, self.store)
        self._served = Served(self.app, settings.host, settings.port)

    @property
    def base_url(self) -> str:
        return self._served.base_url

    async def __aenter__(self) -> ProvisioningServer:
        await self._served.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._served.stop()
        await self.app.state.upstream.close()
        self.store.close()


def profile_for(
    voice: str = "marin", instructions: str = "", tools: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A group profile: the session config minted into every key of the group."""
    session: dict[str, Any] = {
        "type": "realtime",
        "model": "gpt-realtime",
        "audio": {"output": {"voice": voice}},
    }
    if instructions:
        session["instructions"] = instructions
    if tools is not None:
        session["tools"] = tools
    return session

"""The GPT-Live relay: the trusted server of OpenAI's Live WebRTC flow.

GPT-Live has no ephemeral keys. A device posts its SDP offer here (device JWT, exactly the
mint's admission: signature, replay, revocation, rate limits and daily quota, audit row); the
relay posts ``{"session": <the group's Live config>, "transport": {"type": "webrtc", "sdp"}}``
to ``{upstream}/v1/live/sessions`` with the project key and returns only the answer SDP and
the session id. Media then flows straight between the device and OpenAI: the relay is in the
signalling path once per session, never in the media path. The project key and the session
config (model, instructions, delegation, triggers) never reach the device.

A group chooses its backend in its profile: ``{"type": "realtime", ...}`` (the default; a
Realtime session minted into ephemeral keys) or ``{"type": "live", "model": "gpt-live-1", ...}``
whose other fields are ``MediaSessionConfigParam`` (``openai.types.live``). A device asking the
wrong endpoint is told where to go (``409 backend_live`` / ``409 backend_realtime``), so a group
that changes backend moves its devices at their next session.

The device may name its own function tools (time, volume, timers, status, camera): under
Responses delegation they are added to ``delegation.responses.tools``; the Responses backend's
calls come back to the device on the data channel.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import from_json, to_json
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError

from provisioning import schema
from provisioning.auth import AuthError, bearer_kid
from provisioning.ledger import MintLedger, Refused
from provisioning.refusals import error_reply, refusal, refused_early
from provisioning.schema import (
    DEVICE_JWT,
    MAX_DEVICE_TOOLS,
    MAX_OFFER_BYTES,
    DeviceTool,
    LiveSessionRequest,
    errors,
)
from provisioning.upstream import UpstreamError, _retry_after, safety_identifier

log = logging.getLogger(__name__)
JSON = dict[str, Any]

LIVE = "live"
REALTIME = "realtime"
MAX_TOOLS_BYTES = 32 * 1024
_TOOLS = TypeAdapter(Annotated[list[DeviceTool], Field(max_length=MAX_DEVICE_TOOLS)])
LIVE_SESSION_KEYS = {
    "model",
    "audio",
    "client",
    "delegation",
    "idle_timeout_s",
    "input",
    "instructions",
    "store",
    "triggers",
    "wake_policy",
}
"""What a Live group profile may set (``MediaSessionConfigParam`` less ``safety_identifier``,
which the relay sets per device)."""
DEVICE_CLIENT_EVENTS = [
    "session.input_audio.mute",
    "session.input_audio.unmute",
    "session.commentary.append",
    "session.instructions.append",
    "response.item.create",
    "response.create",
    "session.close",
]
"""What a device may send on its data channel (``client.data_channel.allowed_client_events``,
unless the group sets ``client`` itself): not ``session.update``, so a device cannot change the
backend's instructions, tools or triggers, and no audio fixtures."""


def backend_of(profile: dict[str, Any]) -> str:
    """The backend a group profile chooses: ``live`` or ``realtime`` (the default)."""
    return LIVE if profile.get("type") == LIVE else REALTIME


def live_profile(
    model: str = "gpt-live-1",
    voice: str = "marin",
    instructions: str = "",
    delegation: JSON | None = None,
    standby_after_s: int | None = None,
    **extra: Any,
) -> JSON:
    """A Live group profile (see ``check_live_profile`` for what it may hold).
    ``standby_after_s``: pause inference after this much silence (billed at the standby rate)
    until speech wakes it (``wake_policy`` speech + ``idle_timeout_s``; docs/live.md)."""
    profile: JSON = {"type": LIVE, "model": model, "audio": {"output": {"voice": voice}}}
    if instructions:
        profile["instructions"] = instructions
    if delegation is not None:
        profile["delegation"] = delegation
    if standby_after_s is not None:
        profile["wake_policy"] = {"type": "speech"}
        profile["idle_timeout_s"] = standby_after_s
    profile.update(extra)
    check_live_profile(profile)
    return profile


def check_live_profile(profile: JSON) -> None:
    """``ValueError`` naming the key unless ``profile`` is a usable Live group profile."""
    unknown = set(profile) - LIVE_SESSION_KEYS - {"type"}
    if unknown:
        raise ValueError(f"unknown Live session key: {sorted(unknown)[0]}")
    if not isinstance(profile.get("model"), str) or not profile["model"]:
        raise ValueError("model: a Live group needs a model (gpt-live-1 or gpt-live-1.1)")
    delegation = profile.get("delegation")
    if delegation is not None and (
        not isinstance(delegation, dict)
        or delegation.get("type") not in ("client", "responses", "decisions")
    ):
        raise ValueError("delegation.type: client, responses or decisions")


def device_tools(raw: Any) -> list[JSON]:
    """The device's function tools, checked: ``FunctionTool`` shape (``schema.DeviceTool``),
    bounded in number and size. ``ValueError`` says what is wrong."""
    if raw is None:
        return []
    try:
        tools = _TOOLS.validate_python(raw)
    except ValidationError as exc:
        raise ValueError(f"tools: {_first(exc)}") from None
    listed = [tool.model_dump(exclude_unset=True) for tool in tools]
    if len(to_json(listed)) > MAX_TOOLS_BYTES:
        raise ValueError(f"tools: at most {MAX_TOOLS_BYTES} bytes")
    return listed


def _first(exc: ValidationError) -> str:
    """What is wrong, and where, for the device (the first of pydantic's errors)."""
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def session_config(profile: JSON, device_id: str, tools: list[JSON]) -> JSON:
    """The ``session`` posted upstream for one device: the group's Live config, the device's
    safety identifier, and its tools under Responses delegation (the group's tools win a name
    clash)."""
    session = {k: copy.deepcopy(v) for k, v in profile.items() if k != "type"}
    session["safety_identifier"] = safety_identifier(device_id)
    session.setdefault("client", {"data_channel": {"allowed_client_events": DEVICE_CLIENT_EVENTS}})
    delegation = session.get("delegation")
    if tools and isinstance(delegation, dict) and delegation.get("type") == "responses":
        responses = delegation.setdefault("responses", {})
        group_tools = responses.setdefault("tools", [])
        taken = {t.get("name") for t in group_tools if isinstance(t, dict)}
        group_tools.extend(t for t in tools if t["name"] not in taken)
    return session


@dataclass(frozen=True, slots=True)
class Created:
    session_id: str
    sdp: str = field(repr=False)
    request_id: str


@dataclass
class LiveUpstream:
    """``POST {base}/v1/live/sessions`` with the project key."""

    base_url: str
    api_key: str = field(repr=False)
    timeout_s: float = 10.0
    _client: Client | None = field(default=None, init=False, repr=False)

    def _session(self) -> Client:
        if self._client is None:
            self._client = (
                ClientBuilder()
                .timeout(timedelta(seconds=self.timeout_s))
                .follow_redirects(False)  # a redirect would carry the key away
                .default_cookie_store(False)
                .tcp_nodelay(True)
                .build()
            )
        return self._client

    async def create(self, session: JSON, sdp: str) -> Created:
        body = {"session": session, "transport": {"type": "webrtc", "sdp": sdp}}
        try:
            request = (
                self._session()
                .post(f"{self.base_url.rstrip('/')}/v1/live/sessions")
                .header("Authorization", f"Bearer {self.api_key}", is_sensitive=True)
                .header("Content-Type", "application/json")
                .body_bytes(to_json(body))
                .build()
            )
            response = await request.send()
            request_id = response.get_header("x-request-id") or ""
            data = from_json(bytes(await response.bytes()) or b"{}")
        except (PyreqwestError, ValueError) as exc:
            log.warning("Live upstream unreachable or garbled: %s", type(exc).__name__)
            raise UpstreamError(0, 5.0) from None
        if response.status != 200:
            error = data.get("error") if isinstance(data, dict) else None
            log.warning(
                "Live upstream answered %d: %s (request id %s)",
                response.status,
                (error or {}).get("code") if isinstance(error, dict) else "-",
                request_id or "-",
                extra={"upstream_status": response.status, "request_id": request_id},
            )
            raise UpstreamError(
                response.status, _retry_after(response.get_header("retry-after"), response.status)
            )
        try:
            return Created(str(data["session"]["id"]), str(data["transport"]["sdp"]), request_id)
        except (TypeError, KeyError):
            log.warning("Live upstream answered 200 without a session (request id %s)", request_id)
            raise UpstreamError(502, 5.0) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def install(app: FastAPI, ledger: MintLedger, upstream: LiveUpstream) -> None:
    """Serve ``POST /v1/live/sessions`` (device JWT) on the provisioning server's app."""

    @app.post(
        "/v1/live/sessions",
        response_model=schema.LiveSession,
        responses=errors(400, 401, 409, 429, 502, 503),
        openapi_extra=schema.body(LiveSessionRequest),
        dependencies=DEVICE_JWT,
    )
    async def open_live_session(request: Request) -> Response:
        """Relay the device's SDP offer to GPT-Live with its group's config; return the
        answer and the session id (nothing else)."""
        try:
            token, kid = bearer_kid(request.headers.get("authorization", ""))
        except AuthError as exc:
            return refused_early(exc).response()
        raw = await request.body()
        try:
            if len(raw) > MAX_OFFER_BYTES + MAX_TOOLS_BYTES:
                raise ValueError("the request is too large")
            try:
                body = LiveSessionRequest.model_validate_json(raw)
            except ValidationError as exc:
                raise ValueError(_first(exc)) from None
            sdp = body.sdp
            tools = device_tools(body.model_dump(exclude_unset=True).get("tools"))
        except ValueError as exc:
            return error_reply(400, "bad_request", str(exc)).response()
        admitted = await ledger.admit(token, kid)  # the mint's rules: JWT, replay, limits
        if isinstance(admitted, Refused):
            return refusal(admitted).response()
        if backend_of(admitted.profile) != LIVE:
            ledger.record("live.session", admitted.device_id, outcome="wrong_backend")
            return error_reply(
                409, "backend_realtime", "this device's group uses the Realtime API"
            ).response()
        session = session_config(admitted.profile, admitted.device_id, tools)
        try:
            created = await upstream.create(session, sdp)
        except UpstreamError as exc:
            ledger.record(
                "live.session", admitted.device_id, outcome="upstream_error", status=exc.status
            )
            if exc.status == 400:
                return error_reply(
                    502, "live_config_rejected", "GPT-Live refused the group's config"
                ).response()
            return error_reply(
                503,
                "upstream_unavailable",
                "the GPT-Live service is unavailable",
                retry_after=exc.retry_after,
            ).response()
        ledger.record(
            "live.session",
            admitted.device_id,
            outcome="ok",
            session_id=created.session_id,
            upstream_request_id=created.request_id,
        )
        log.info(
            "live session %s opened for %s",
            created.session_id,
            admitted.device_id,
            extra={"device_id": admitted.device_id, "session_id": created.session_id},
        )
        return JSONResponse({"session_id": created.session_id, "sdp": created.sdp})


def wrong_backend_reply(profile: dict[str, Any]) -> tuple[int, str, str] | None:
    """For the mint: ``(409, code, message)`` when the device's group uses GPT-Live."""
    if backend_of(profile) == LIVE:
        return 409, "backend_live", "this device's group uses GPT-Live: POST /v1/live/sessions"
    return None

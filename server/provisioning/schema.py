"""The device API's request and response bodies: validated with Pydantic (whose JSON parser
bounds nesting) and described in the OpenAPI schema, every status code included."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from provisioning.auth import PUBLIC_KEY

MAX_NAME = 64


def name_ok(name: str) -> bool:
    """A device name people read in lists and logs: 1-64 characters, none of them control
    characters, escapes, format characters (bidirectional overrides) or lone surrogates."""
    return 0 < len(name.strip()) <= MAX_NAME and name.isprintable()


Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_NAME,
        description="printable: no control or format characters, no lone surrogates",
    ),
]
PublicKey = Annotated[
    str,
    Field(
        pattern=f"^{PUBLIC_KEY.pattern}$",
        description="raw 32-byte Ed25519 public key, unpadded base64url (canonical, a valid "
        "point not of small order, used by no other device)",
    ),
]


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(pattern="^[A-Za-z0-9_-]{1,128}$", description="enrollment token")
    public_key: PublicKey
    name: Name = "device"


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: PublicKey


class Enrolled(BaseModel):
    device_id: str
    group: str


class Rotated(BaseModel):
    device_id: str
    overlap_until: float


class HeartbeatReply(BaseModel):
    """A heartbeat's 200 reply (otherwise 204, no body)."""

    rotate_key: bool
    """An admin asked for a new key: rotate it (``POST /v1/devices/rotate``) now."""


class MintedKey(BaseModel):
    value: str
    expires_at: int
    session: dict[str, Any]
    realtime_base: str


MAX_OFFER_BYTES = 64 * 1024
MAX_DEVICE_TOOLS = 32


class DeviceTool(BaseModel):
    """One of the device's function tools (``FunctionTool``), called by the Responses backend."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(pattern="^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    strict: bool | None = None


class LiveSessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(
        pattern="^v=0", max_length=MAX_OFFER_BYTES, description="the device's SDP offer"
    )
    tools: list[DeviceTool] | None = Field(
        default=None, max_length=MAX_DEVICE_TOOLS, description="at most 32 KiB in all"
    )


class LiveSession(BaseModel):
    session_id: str
    sdp: str = Field(description="the answer SDP")


class ErrorDetail(BaseModel):
    code: str
    message: str
    server_time: float | None = Field(
        default=None, description="with `clock_skew`: the server's clock, Unix seconds"
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


def body(model: type[BaseModel] | None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself: its request body
    (``model`` ``None``: any JSON object)."""
    schema = {"type": "object"} if model is None else _inline(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its nested models (``$defs``) written in place, as the
    OpenAPI document has no ``$defs`` for a route's own body."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


DEVICE_JWT = [Security(HTTPBearer(auto_error=False, scheme_name="deviceJWT", bearerFormat="JWT"))]
"""For the schema: device routes take ``Authorization: Bearer <device JWT>`` (each route
checks it itself, through the ledger)."""
ADMIN_KEY = [Security(HTTPBearer(auto_error=False, scheme_name="adminKey"))]
"""For the schema: admin routes take ``Authorization: Bearer adm_<id>.<secret>``."""


class TokenRequest(BaseModel):
    group: str = Field(default="default", max_length=64)
    uses: int = Field(default=1, ge=1, le=100_000)
    ttl_s: float = Field(default=86400, ge=60, le=90 * 86400)
    label: str = Field(default="", max_length=128)


class TranscriptsRequest(BaseModel):
    enabled: bool


class GroupRequest(BaseModel):
    profile: dict[str, Any] | None = Field(
        default=None, description="the Realtime session object minted into keys; has a `type`"
    )
    limits: dict[str, int] | None = Field(
        default=None, description="`device_per_minute`, `device_per_day`, `group_per_minute`"
    )


_REASONS = {
    400: "malformed request body",
    401: "refused credential (`clock_skew`, `replayed`, `unknown_key`, `revoked`, "
    "`disabled`, `invalid_token`; enrollment: unknown token)",
    403: "the credential may not do this (a superseded key)",
    404: "no such device, group or action",
    408: "the request body was not received in time",
    409: "conflict (token used up, key in use, concurrent rotation, the group uses the other "
    "backend: `backend_live`, `backend_realtime`)",
    410: "enrollment token expired",
    413: "request body too large",
    429: "rate limited (see Retry-After)",
    431: "request headers too large",
    502: "the upstream refused the group's session config",
    503: "database or upstream unavailable (see Retry-After)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries for error statuses, each with the error body, plus those every
    route may answer (413, 408, 431 from the request limits)."""
    every = sorted({*statuses, 408, 413, 431})
    return {s: {"model": ErrorBody, "description": _REASONS[s]} for s in every}

"""Device authentication: a short EdDSA JWT signed with the device's enrolled Ed25519 key.

The signature check is PyJWT's (``PyJWS``); this module decides which keys a device may sign
with (its key, and during a rotation overlap its previous one) and which claims are required,
and checks them. The replay check (``jti``) and the device's flags are the caller's: they need
the database.

The Ed25519 signature itself is checked by libsodium (PyNaCl), an algorithm registered on a
``PyJWS`` of our own through PyJWT's public interface: faster than OpenSSL's, and every mint
checks one (figures: docs/server.md, "How a mint is served").
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import Algorithm
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from provisioning.errors import ProvisioningError

AUDIENCE = "appliance-provisioning"
MAX_JWT_LIFETIME_S = 60
REQUIRED_CLAIMS = ("aud", "exp", "iat", "iss", "jti", "sub")
MAX_HEADER_SEGMENT = 512
"""A device's JWT header (alg, kid, typ) is about 75 characters encoded."""
MAX_TOKEN = 2048
"""A device's JWT is about 300 characters; anything longer is refused before it is parsed."""
IAT_LEEWAY_S = 60.0
"""How far in the future a JWT's ``iat`` may be (a device clock running ahead)."""
EXP_LEEWAY_S = 5.0
"""How long past its ``exp`` a JWT is still accepted (a device clock running behind, and the
time the request spent on the way). A JWT id is remembered until ``exp`` plus this."""
MAX_JTI = 64
"""The ``used_jti`` column's length."""
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
"""What a ``kid`` (a device id, ``dev_`` and 16 hex digits) may look like: it is looked up in
the database, so anything else is refused before."""
JTI = re.compile(r"[\x21-\x7e]{1,64}")

# the codes of refused device JWTs (docs/contracts.md): always HTTP 401
CLOCK_SKEW = "clock_skew"
REPLAYED = "replayed"
UNKNOWN_KEY = "unknown_key"
REVOKED = "revoked"
DISABLED = "disabled"
INVALID_TOKEN = "invalid_token"  # noqa: S105  # an error code, not a secret


class AuthError(ProvisioningError):
    """A refused credential: HTTP ``status`` and a machine-readable ``code``; for
    ``clock_skew`` the server's time (``server_time``) so the device can correct itself."""

    def __init__(
        self, status: int, code: str, message: str, server_time: float | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.server_time = status, code, server_time


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """What verification needs from a device row."""

    id: str
    public_key: str
    previous_key: str | None
    previous_until: float | None

    def valid(self, now: float) -> tuple[str, ...]:
        """The keys it may sign with at ``now``: its key, and during a rotation overlap the
        previous one."""
        if self.previous_key and (self.previous_until or 0) > now:
            return (self.public_key, self.previous_key)
        return (self.public_key,)


def bearer_kid(authorization: str) -> tuple[str, str]:
    """``(token, kid)`` from an ``Authorization: Bearer <jwt>`` header, before verification."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(401, INVALID_TOKEN, "a device JWT is required")
    if len(token) > MAX_TOKEN:
        raise AuthError(401, INVALID_TOKEN, "JWT too long")
    header_segment = token.split(".", 1)[0]
    if len(header_segment) > MAX_HEADER_SEGMENT:  # also bounds what the cache below holds
        raise AuthError(401, INVALID_TOKEN, "malformed JWT")
    return token, _kid(header_segment)


@functools.lru_cache(maxsize=4096)
def _kid(header_segment: str) -> str:
    """The ``kid`` of a JWT header segment, only to find the key (PyJWT verifies all of it
    afterwards). Cached: a device's tokens all have the same header."""
    try:
        header = json.loads(b64d(header_segment))
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AuthError(401, INVALID_TOKEN, "malformed JWT") from None
    if header.get("alg") != "EdDSA":
        raise AuthError(401, INVALID_TOKEN, "JWT must be signed with EdDSA")
    kid = header.get("kid")
    if not isinstance(kid, str) or not DEVICE_ID.fullmatch(kid):
        raise AuthError(401, INVALID_TOKEN, "JWT kid is not a device id")
    return kid


class SodiumEd25519(Algorithm):
    """PyJWT's ``EdDSA`` for verification only, with Ed25519 keys as PyNaCl ``VerifyKey``s
    (libsodium: strict RFC 8032 checks, canonical encodings, no small-order keys)."""

    def prepare_key(self, key: Any) -> VerifyKey:
        if not isinstance(key, VerifyKey):
            raise TypeError("an Ed25519 VerifyKey is required")
        return key

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        try:
            self.prepare_key(key).verify(msg, sig)
        except (BadSignatureError, ValueError, TypeError):  # bad signature, or not 64 bytes
            return False
        return True

    def sign(self, msg: bytes, key: Any) -> bytes:
        raise NotImplementedError("devices sign; the server only verifies")

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError


def _signatures() -> jwt.PyJWS:
    """A ``PyJWS`` of our own whose only algorithm is ``EdDSA`` through libsodium (its public
    per-instance registry); PyJWT's module-level one, which signs, is left as it is."""
    jws = jwt.PyJWS(algorithms=[])
    jws.register_algorithm("EdDSA", SodiumEd25519())
    return jws


SIGNATURES = _signatures()


def _claims(token: str, key: VerifyKey) -> dict[str, Any]:
    """The claims of ``token`` once its signature verifies with ``key``: a JSON object with
    every required claim (types, values and times are ``claims_ok``'s)."""
    # PyJWS's hints list only its own key types
    decoded = SIGNATURES.decode_complete(token, key, algorithms=["EdDSA"])  # type: ignore[arg-type]
    payload = decoded["payload"]
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise jwt.DecodeError(f"Invalid payload string: {exc}") from exc
    if not isinstance(claims, dict):
        raise jwt.DecodeError("Invalid payload string: must be a json object")
    for claim in REQUIRED_CLAIMS:
        if claims.get(claim) is None:
            raise jwt.MissingRequiredClaimError(claim)
    return claims


def verify(token: str, device: DeviceKeys, now: float) -> tuple[dict[str, Any], str]:
    """The token's claims and the key that verified it; ``AuthError`` if it is not valid for
    ``device`` at ``now`` (signature, audience, issuer, subject, claim types, times)."""
    failure = "bad signature"
    for key in device.valid(now):
        try:
            claims = _claims(token, _public_key(key))
        except jwt.InvalidSignatureError:
            continue
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
            failure = type(exc).__name__
            break
        claims_ok(claims, device.id, now)
        return claims, key
    raise AuthError(401, INVALID_TOKEN, f"JWT rejected: {failure}")


def claims_ok(claims: dict[str, Any], device_id: str, now: float) -> None:
    """Claim types and shapes, then times with the leeway; ``AuthError`` otherwise."""
    iat, exp, jti = claims["iat"], claims["exp"], claims["jti"]
    if not (_time(iat) and _time(exp) and isinstance(jti, str) and JTI.fullmatch(jti)):
        raise AuthError(401, INVALID_TOKEN, "JWT claims: iat, exp numbers; jti 1-64 characters")
    if claims["aud"] != AUDIENCE or claims["sub"] != device_id or claims["iss"] != device_id:
        raise AuthError(401, INVALID_TOKEN, "JWT audience, issuer or subject not allowed")
    if not 0 < exp - iat <= MAX_JWT_LIFETIME_S:
        raise AuthError(401, INVALID_TOKEN, "JWT lifetime not allowed")
    if iat > now + IAT_LEEWAY_S:
        raise AuthError(401, CLOCK_SKEW, "JWT issued in the future", server_time=now)
    if exp < now - EXP_LEEWAY_S:
        raise AuthError(401, CLOCK_SKEW, "JWT expired", server_time=now)


def _time(value: Any) -> bool:
    """A JSON number that can be a time (not a string, a boolean, infinite or huge)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value < 1e11
    )


def b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


PUBLIC_KEY = re.compile(r"[A-Za-z0-9_-]{43}")


def public_key_ok(value: Any) -> bool:
    """A device public key as the server stores it: canonical unpadded base64url of 32 bytes
    that are a valid Ed25519 point (libsodium: canonical, on the curve, not of small order,
    so no all-zero or identity key)."""
    if not isinstance(value, str) or not PUBLIC_KEY.fullmatch(value):
        return False
    try:
        raw = b64d(value)
    except (ValueError, binascii.Error):
        return False
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == value
    return canonical and bool(crypto_core_ed25519_is_valid_point(raw))


@functools.lru_cache(maxsize=4096)
def _public_key(key: str) -> VerifyKey:
    return VerifyKey(b64d(key))

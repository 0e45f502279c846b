"""Device authentication: a short EdDSA JWT signed with the device's enrolled Ed25519 key.

Verification is PyJWT's; this module only decides which keys a device may sign with (its key,
and during a rotation overlap its previous one) and which claims are required. The replay
check (``jti``) and the device's flags are the caller's: they need the database.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

AUDIENCE = "appliance-provisioning"
MAX_JWT_LIFETIME_S = 60


class AuthError(Exception):
    """A refused credential: HTTP ``status`` and a machine-readable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


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
        raise AuthError(401, "missing_credentials", "a device JWT is required")
    try:  # only the header, to find the key: PyJWT verifies all of it afterwards
        header = json.loads(b64d(token.split(".", 1)[0]))
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise AuthError(401, "bad_token", "malformed JWT") from None
    if header.get("alg") != "EdDSA":
        raise AuthError(401, "bad_token", "JWT must be signed with EdDSA")
    return token, str(header.get("kid", ""))


def verify(token: str, device: DeviceKeys, now: float) -> tuple[dict[str, Any], str]:
    """The token's claims and the key that verified it; ``AuthError`` if it is not valid for
    ``device`` at ``now`` (signature, audience, expiry, subject, lifetime)."""
    failure = "InvalidSignatureError"
    for key in device.valid(now):
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                _public_key(key),
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                options={"require": ["exp", "iat", "jti", "sub"]},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            failure = type(exc).__name__
            break
        if claims["sub"] != device.id or claims["exp"] - claims["iat"] > MAX_JWT_LIFETIME_S:
            raise AuthError(401, "bad_token", "JWT subject or lifetime not allowed")
        return claims, key
    raise AuthError(401, "bad_token", f"JWT rejected: {failure}")


def b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@functools.lru_cache(maxsize=4096)
def _public_key(key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(b64d(key))

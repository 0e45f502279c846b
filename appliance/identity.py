"""The device's identity: an Ed25519 key pair made on the device, and short EdDSA JWTs.

The private key never leaves the device (``device.key``, mode 0600, under the state
directory); the server only ever sees the public key, registered at enrollment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.clock import ServerClock
from appliance.errors import ConfigError, EnrollmentError, ProvisioningUnavailable
from appliance.neterrors import describe

AUDIENCE = "appliance-provisioning"
KEY_FILE = "device.key"
ID_FILE = "device.json"


@dataclass(frozen=True)
class Identity:
    device_id: str
    server: str
    private_key: Ed25519PrivateKey
    clock: ServerClock = field(default_factory=ServerClock, compare=False, repr=False)
    """Tokens are stamped with the server's time (the device may have no RTC)."""

    @classmethod
    def load(cls, state_dir: Path) -> Identity:
        """Raises ``FileNotFoundError`` when the device has not enrolled yet (no
        ``device.json``), and ``ConfigError`` naming the file when an identity file is
        unreadable or corrupt: restarting cannot fix either, so the daemon exits 78."""
        id_path = state_dir / ID_FILE
        try:
            info = json.loads(id_path.read_text())
            device_id, server = str(info["device_id"]), str(info["server"])
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ConfigError(str(id_path), f"cannot read: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(str(id_path), f"corrupt ({_what(exc)}): enroll again") from None
        # under systemd the key may come through LoadCredential= ($CREDENTIALS_DIRECTORY)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        key_path = Path(creds) / KEY_FILE if creds and (Path(creds) / KEY_FILE).exists() else None
        key_path = key_path or state_dir / KEY_FILE
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(str(key_path), f"cannot read: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                str(key_path), f"not a usable private key ({_what(exc)}): enroll again"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(str(key_path), "not an Ed25519 key: enroll again")
        return cls(device_id, server, key)

    def token(self, lifetime_s: int = 30) -> str:
        """A single-use JWT proving this device's identity to the provisioning server,
        stamped with the server's time."""
        now = int(self.clock.now())
        claims = {
            "iss": self.device_id,
            "sub": self.device_id,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(
            claims, self.private_key, algorithm="EdDSA", headers={"kid": self.device_id}
        )


def _what(exc: Exception) -> str:
    """The first line of an exception's message, short (for a one-line exit message)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def enroll(server: str, token: str, state_dir: Path, name: str) -> Identity:
    """Make a key pair, register its public half with ``token``, store the identity."""
    key = Ed25519PrivateKey.generate()
    body = {"token": token, "public_key": public_key_b64(key), "name": name}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{server.rstrip('/')}/v1/devices/enroll", json=body)
    except httpx.HTTPError as exc:
        raise ProvisioningUnavailable(f"provisioning server unreachable: {describe(exc)}") from exc
    if response.status_code != 201:
        try:
            detail = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = response.reason_phrase
        raise EnrollmentError(f"enrollment refused ({response.status_code}): {detail}")
    device_id = str(response.json()["device_id"])
    await asyncio.to_thread(_save, state_dir, key, device_id, server, name)
    return Identity(device_id, server, key)


def _save(state_dir: Path, key: Ed25519PrivateKey, device_id: str, server: str, name: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path = state_dir / KEY_FILE
    tmp = state_dir / (KEY_FILE + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, key_path)  # atomic: the old key or the new one, never half a key
    info = {"device_id": device_id, "server": server, "name": name}
    (state_dir / ID_FILE).write_text(json.dumps(info))


async def rotate(identity: Identity, state_dir: Path) -> Identity:
    """Make a new key pair, register it with a JWT signed by the current key, then store it.
    The server accepts both keys for an overlap window, so a crash between the two steps
    loses nothing."""
    key = Ed25519PrivateKey.generate()
    headers = {"Authorization": f"Bearer {identity.token()}"}
    url = f"{identity.server.rstrip('/')}/v1/devices/rotate"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                url, json={"public_key": public_key_b64(key)}, headers=headers
            )
    except httpx.HTTPError as exc:
        raise ProvisioningUnavailable(f"provisioning server unreachable: {describe(exc)}") from exc
    if response.status_code != 200:
        raise EnrollmentError(f"key rotation refused ({response.status_code})")
    info = json.loads((state_dir / ID_FILE).read_text())
    await asyncio.to_thread(
        _save, state_dir, key, identity.device_id, identity.server, info["name"]
    )
    return Identity(identity.device_id, identity.server, key, identity.clock)

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
PENDING_KEY_FILE = "device.key.pending"
ID_FILE = "device.json"


@dataclass(frozen=True)
class Identity:
    device_id: str
    server: str
    private_key: Ed25519PrivateKey
    clock: ServerClock = field(default_factory=ServerClock, compare=False, repr=False)
    """Tokens are stamped with the server's time (the device may have no RTC)."""
    state_dir: Path | None = field(default=None, compare=False, repr=False)
    """Where its key file lives, so a rotation can replace it; ``None`` when the key came
    from elsewhere (a systemd credential), which a rotation here could not update."""

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
        own = key_path == state_dir / KEY_FILE
        return cls(device_id, server, key, state_dir=state_dir if own else None)

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
    """Make (or reuse) a key pair, register its public half with ``token``, store the identity.

    Everything local happens first: the state directory is created, a key is generated and
    saved as ``device.key.pending`` (proving the directory is writable), and only then is the
    single-use token spent. A failed claim leaves the pending key; a retry sends the same
    public key, which the server accepts again for the same token (idempotent claim). Only a
    successful claim turns the pending key into ``device.key`` and writes ``device.json``, so
    a failed re-enrollment never replaces a working identity.
    """
    key = await asyncio.to_thread(_prepare, state_dir)
    body = {"token": token, "public_key": public_key_b64(key), "name": name}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{server.rstrip('/')}/v1/devices/enroll", json=body)
    except httpx.HTTPError as exc:
        raise ProvisioningUnavailable(f"provisioning server unreachable: {describe(exc)}") from exc
    if response.status_code not in (200, 201):
        try:
            detail = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = response.reason_phrase
        raise EnrollmentError(f"enrollment refused ({response.status_code}): {detail}")
    device_id = str(response.json()["device_id"])
    await asyncio.to_thread(_commit, state_dir, device_id, server, name)
    return Identity(device_id, server, key, state_dir=state_dir)


def _prepare(state_dir: Path) -> Ed25519PrivateKey:
    """The pending key of an earlier, failed attempt, or a new one saved as pending.
    Raises ``ConfigError`` naming ``--state-dir`` when the directory cannot be written."""
    pending = state_dir / PENDING_KEY_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        key = _load_pending(pending) or Ed25519PrivateKey.generate()
        _write_key(pending, key)  # (re)written: proves the directory is writable now
        probe = state_dir / (ID_FILE + ".new")
        probe.write_text("{}")
        probe.unlink()
    except OSError as exc:
        who = f"user {os.getuid()}" if hasattr(os, "getuid") else "this user"
        raise ConfigError(
            "--state-dir",
            f"cannot write {state_dir} as {who} ({exc.strerror or exc}); nothing was sent, "
            "the token is unspent: run as the directory's owner (sudo -u appliance …) or as root",
        ) from None
    return key


def _load_pending(path: Path) -> Ed25519PrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # damaged: a new key replaces it
    return key if isinstance(key, Ed25519PrivateKey) else None


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Atomically: the old file or the new one, never half a key; mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    _own_like_dir(tmp)
    os.replace(tmp, path)


def _own_like_dir(path: Path) -> None:
    """Run as root (sudo appliance enroll …), files go to the state directory's owner, so
    the service user can read its key."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        st = path.parent.stat()
        os.chown(path, st.st_uid, st.st_gid)


def _commit(state_dir: Path, device_id: str, server: str, name: str) -> None:
    os.replace(state_dir / PENDING_KEY_FILE, state_dir / KEY_FILE)
    _write_info(state_dir, device_id, server, name)


def _write_info(state_dir: Path, device_id: str, server: str, name: str) -> None:
    info = {"device_id": device_id, "server": server, "name": name}
    tmp = state_dir / (ID_FILE + ".new")
    tmp.write_text(json.dumps(info))
    _own_like_dir(tmp)
    os.replace(tmp, state_dir / ID_FILE)


def _save(state_dir: Path, key: Ed25519PrivateKey, device_id: str, server: str, name: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_key(state_dir / KEY_FILE, key)
    _write_info(state_dir, device_id, server, name)


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
    return Identity(identity.device_id, identity.server, key, identity.clock, state_dir)

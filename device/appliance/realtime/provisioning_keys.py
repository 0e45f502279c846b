"""``ProvisioningKeySource``: ephemeral keys from our provisioning server, device-authenticated.

Every answer's ``Date`` header keeps the identity's ``ServerClock`` in step. A 401 is judged
only after the device has taken the server's time: ``clock_skew`` (or a 401 with no reason or
a generic one, as older servers send, while the clocks disagreed) is retried once with a token
in server time; a 401
that survives that is a time refusal (``ClockSkew``) or a revocation (``DeviceRevoked``).
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from appliance.errors import (
    BackendMoved,
    ClockSkew,
    DeviceRevoked,
    EnrollmentError,
    ProvisioningUnavailable,
    RateLimited,
)
from appliance.identity import Identity, rotate
from appliance.neterrors import describe
from appliance.realtime.keys import EphemeralKey

NOT_ABOUT_TIME = frozenset({"revoked", "disabled", "unknown_key", "replayed"})
"""401 codes that are definitive whatever the clocks say (the server-side contract)."""


class ProvisioningKeySource:
    def __init__(
        self, identity: Identity, http: httpx.AsyncClient | None = None, timeout_s: float = 10.0
    ) -> None:
        self._identity = identity
        self._http = http
        self._timeout_s = timeout_s

    async def _send(self, path: str, body: dict[str, Any] | None) -> httpx.Response:
        """POST ``body`` with a fresh token, or GET without one when ``body`` is None."""
        url = f"{self._identity.server.rstrip('/')}{path}"
        client = self._http or httpx.AsyncClient(timeout=self._timeout_s)
        try:
            if body is None:
                return await client.get(url)
            headers = {"Authorization": f"Bearer {self._identity.token()}"}
            return await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProvisioningUnavailable(
                f"provisioning server unreachable: {describe(exc)}", 5.0
            ) from exc
        finally:
            if self._http is None:
                await client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        clock = self._identity.clock
        for attempt in (1, 2):
            response = await self._send(path, body)
            resynced = clock.learn_from(response.headers)
            if response.status_code in (200, 201, 204):
                return response
            code, message, server_time = _refusal(response)
            if response.status_code == 401 and code == "clock_skew":
                if server_time is not None:
                    clock.learn(server_time, precise=True)
                if attempt == 1:
                    continue  # the next token carries the server's time
                raise ClockSkew(
                    "the provisioning server refused the device's clock (clock_skew), "
                    f"device clock {-clock.offset_s:+.0f} s off server time",
                    clock.offset_s,
                )
            maybe_time = code not in NOT_ABOUT_TIME and resynced and attempt == 1
            if response.status_code == 401 and maybe_time:
                continue  # the clocks disagreed: first retry in server time
            retry = _retry_after(response)
            if response.status_code in (401, 403):
                reason = f"{response.status_code} {code}" if code else str(response.status_code)
                detail = f": {message}" if message else ""
                raise DeviceRevoked(
                    f"the provisioning server refused this device ({reason}){detail}", code
                )
            if response.status_code == 409 and code in MOVED:
                raise BackendMoved(MOVED[code])
            if response.status_code == 429:
                after = f" (retry in {retry:.0f} s)" if retry else ""
                raise RateLimited(f"rate limited by the provisioning server{after}", retry)
            raise ProvisioningUnavailable(
                f"provisioning server answered {response.status_code}{' ' + code if code else ''}",
                retry,
            )
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    async def get_key(self) -> EphemeralKey:
        data = (await self._post("/v1/realtime/keys", {})).json()
        return EphemeralKey(
            value=str(data["value"]),
            expires_at=float(data["expires_at"]),
            realtime_base=str(data["realtime_base"]),
            session=dict(data.get("session") or {}),
        )

    async def open_live(self, sdp: str, tools: list[dict[str, Any]]) -> tuple[str, str]:
        """Open a GPT-Live session through the server's relay: ``(session id, answer SDP)``.
        The server adds the group's config and the project key; the device sees neither."""
        data = (await self._post("/v1/live/sessions", {"sdp": sdp, "tools": tools})).json()
        return str(data["session_id"]), str(data["sdp"])

    async def heartbeat(self, health: dict[str, Any]) -> dict[str, Any]:
        """Send a health report; the server's requests in reply (``rotate_key``), if any."""
        response = await self._post("/v1/devices/heartbeat", health)
        if response.status_code != 200:
            return {}
        try:
            reply = response.json()
        except ValueError:
            return {}
        return reply if isinstance(reply, dict) else {}

    async def rotate_key(self) -> None:
        """Make a new key pair and register it (the server asked in a heartbeat's reply);
        every later request signs with it. ``EnrollmentError`` if the key cannot be
        replaced here or the server refused the new one."""
        state_dir = self._identity.state_dir
        if state_dir is None:
            raise EnrollmentError(
                "key rotation asked, but the key is not in the state directory "
                "(a systemd credential): replace it there"
            )
        self._identity = await rotate(self._identity, state_dir)

    async def probe(self) -> None:
        """``GET /healthz``: raises ``ProvisioningUnavailable`` (with the reason in words)
        unless the server answers; its ``Date`` sets the clock on the way."""
        response = await self._send("/healthz", None)
        self._identity.clock.learn_from(response.headers)
        if response.status_code >= 500:
            raise ProvisioningUnavailable(
                f"provisioning server answered {response.status_code}", _retry_after(response)
            )


def _refusal(response: httpx.Response) -> tuple[str | None, str, float | None]:
    """``(code, message, server_time)`` from ``{"error": {"code", "message"}, ...}``."""
    try:
        data = response.json()
        error = data["error"]
        code = error.get("code")
        message = str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, "", None
    raw = data.get("server_time", error.get("server_time"))
    number = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
    server_time = float(raw) if number else None
    return (str(code) if code else None), message[:200], server_time


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


MOVED = {"backend_live": "live", "backend_realtime": "realtime"}
"""409 codes of the server: the device's group uses the other backend."""

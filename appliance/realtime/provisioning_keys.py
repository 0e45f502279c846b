"""``ProvisioningKeySource``: ephemeral keys from our provisioning server, device-authenticated."""

from __future__ import annotations

from typing import Any

import httpx

from appliance.errors import BackendMoved, DeviceRevoked, ProvisioningUnavailable, RateLimited
from appliance.identity import Identity
from appliance.realtime.keys import EphemeralKey


class ProvisioningKeySource:
    def __init__(
        self, identity: Identity, http: httpx.AsyncClient | None = None, timeout_s: float = 10.0
    ) -> None:
        self._identity = identity
        self._http = http
        self._timeout_s = timeout_s

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = f"{self._identity.server.rstrip('/')}{path}"
        headers = {"Authorization": f"Bearer {self._identity.token()}"}
        client = self._http or httpx.AsyncClient(timeout=self._timeout_s)
        try:
            response = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProvisioningUnavailable(
                f"provisioning server unreachable: {type(exc).__name__}", 5.0
            ) from exc
        finally:
            if self._http is None:
                await client.aclose()
        if response.status_code in (200, 201, 204):
            return response
        retry = _retry_after(response)
        if response.status_code in (401, 403):
            raise DeviceRevoked(
                f"the provisioning server refused this device ({response.status_code})"
            )
        if response.status_code == 409 and _code(response) in MOVED:
            raise BackendMoved(MOVED[_code(response)])
        if response.status_code == 429:
            raise RateLimited("rate limited by the provisioning server", retry)
        raise ProvisioningUnavailable(f"provisioning server answered {response.status_code}", retry)

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

    async def heartbeat(self, health: dict[str, Any]) -> None:
        await self._post("/v1/devices/heartbeat", health)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


MOVED = {"backend_live": "live", "backend_realtime": "realtime"}
"""409 codes of the server: the device's group uses the other backend."""


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""

"""The one call that uses the standard OpenAI key: ``client_secrets`` upstream."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The upstream refused or failed. ``retry_after`` seconds; never carries its body."""

    def __init__(self, status: int, retry_after: float) -> None:
        super().__init__(f"upstream answered {status}" if status else "upstream unreachable")
        self.status = status
        self.retry_after = retry_after


@dataclass
class Upstream:
    base_url: str
    api_key: str = field(repr=False)
    ttl_s: int = 60
    timeout_s: float = 5.0
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient())

    async def mint(self, device_id: str, session: dict[str, Any]) -> dict[str, Any]:
        """Mint an ephemeral key for ``device_id`` carrying ``session``."""
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "OpenAI-Safety-Identifier": safety_identifier(device_id),
        }
        body = {
            "expires_after": {"anchor": "created_at", "seconds": self.ttl_s},
            "session": session,
        }
        try:
            response = await self.client.post(
                f"{self.base_url.rstrip('/')}/v1/realtime/client_secrets",
                json=body,
                headers=headers,
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            log.warning("upstream unreachable: %s", type(exc).__name__)
            raise UpstreamError(0, 5.0) from None
        if response.status_code != 200:
            retry = _retry_after(response.headers.get("retry-after"), response.status_code)
            log.warning(
                "upstream answered %d (request id %s)",
                response.status_code,
                response.headers.get("x-request-id", "-"),
            )
            raise UpstreamError(response.status_code, retry)
        data: dict[str, Any] = response.json()
        data["_request_id"] = response.headers.get("x-request-id", "")
        return data

    async def close(self) -> None:
        await self.client.aclose()


def safety_identifier(device_id: str) -> str:
    return hashlib.sha256(f"appliance-device:{device_id}".encode()).hexdigest()[:32]


def _retry_after(header: str | None, status: int) -> float:
    try:
        return max(1.0, float(header)) if header else (5.0 if status >= 500 else 2.0)
    except ValueError:
        return 5.0

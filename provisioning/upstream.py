"""The one call that uses the standard OpenAI key: ``client_secrets`` upstream.

aiohttp, not httpx, because this is the server's hot path: with 32 requests in flight httpx
spends about 3 ms of CPU per request here and aiohttp 0.2 ms (measured; see docs/server.md).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic_core import from_json, to_json

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
    _client: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:  # made on the serving event loop
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                raise_for_status=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # an API: no cookies to keep
            )
        return self._client

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
        url = f"{self.base_url.rstrip('/')}/v1/realtime/client_secrets"
        try:
            payload = to_json(body)  # pydantic-core's JSON, both ways: a fifth of json's time
            headers["Content-Type"] = "application/json"
            async with self._session().post(url, data=payload, headers=headers) as response:
                request_id = response.headers.get("x-request-id", "")
                if response.status != 200:
                    retry = _retry_after(response.headers.get("retry-after"), response.status)
                    log.warning(
                        "upstream answered %d (request id %s)",
                        response.status,
                        request_id or "-",
                        extra={"upstream_status": response.status, "request_id": request_id},
                    )
                    raise UpstreamError(response.status, retry)
                data: dict[str, Any] = from_json(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("upstream unreachable or garbled: %s", type(exc).__name__)
            raise UpstreamError(0, 5.0) from None
        if not isinstance(data, dict) or "value" not in data or "expires_at" not in data:
            log.warning("upstream answered 200 without a key (request id %s)", request_id or "-")
            raise UpstreamError(502, 5.0)
        data["_request_id"] = request_id
        return data

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def safety_identifier(device_id: str) -> str:
    return hashlib.sha256(f"appliance-device:{device_id}".encode()).hexdigest()[:32]


def _retry_after(header: str | None, status: int) -> float:
    try:
        return max(1.0, float(header)) if header else (5.0 if status >= 500 else 2.0)
    except ValueError:
        return 5.0

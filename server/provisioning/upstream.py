"""The one call that uses the standard OpenAI key: ``client_secrets`` upstream.

The client is pyreqwest (Rust's reqwest and hyper, TLS by rustls against the system's trust
store), because this is the server's hot path: it costs the least CPU of the clients tried,
most of it outside the GIL (figures: docs/server.md, "How a mint is served").
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from pydantic_core import from_json, to_json
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.response import Response

from provisioning.errors import ProvisioningError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
"""Connections to the upstream at once; more requests wait for one (up to the timeout)."""
MAX_BODY = 256 * 1024
"""Largest answer read from the upstream (a minted key with its session is about 2 KB)."""
MAX_RETRY_AFTER_S = 300.0
"""The upstream's ``Retry-After`` is passed on to devices, clamped to 1 s – this."""


class UpstreamError(ProvisioningError):
    """The upstream refused or failed. ``retry_after`` seconds; never carries its body."""

    def __init__(self, status: int, retry_after: float) -> None:
        super().__init__(f"upstream answered {status}" if status else "upstream unreachable")
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Minted:
    """An ephemeral key as ``client_secrets`` returned it."""

    value: str = field(repr=False)
    expires_at: int
    session: dict[str, Any]
    request_id: str
    """The upstream's ``x-request-id`` (for the audit log), or ``""``."""


@dataclass
class Upstream:
    base_url: str
    api_key: str = field(repr=False)
    ttl_s: int = 60
    timeout_s: float = 5.0
    _client: Client | None = field(default=None, init=False, repr=False)

    def _session(self) -> Client:
        if self._client is None:  # made on the serving event loop
            self._client = (
                ClientBuilder()
                .timeout(timedelta(seconds=self.timeout_s))
                .max_connections(MAX_CONNECTIONS)
                .follow_redirects(False)  # an API answers; a redirect would carry the key away
                .default_cookie_store(False)
                .tcp_nodelay(True)
                .build()
            )
        return self._client

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/realtime/client_secrets"

    async def mint(self, device_id: str, session: dict[str, Any]) -> Minted:
        """Mint an ephemeral key for ``device_id`` carrying ``session``."""
        body = {
            "expires_after": {"anchor": "created_at", "seconds": self.ttl_s},
            "session": session,
        }
        try:
            request = (
                self._session()
                .post(self.url)
                .header("Authorization", f"Bearer {self.api_key}", is_sensitive=True)
                .header("OpenAI-Safety-Identifier", safety_identifier(device_id))
                .header("Content-Type", "application/json")
                .body_bytes(to_json(body))  # pydantic-core's JSON, both ways: fast
            )
            async with request.build_streamed() as response:
                request_id = (response.get_header("x-request-id") or "")[:128]
                if response.status != 200:
                    retry = _retry_after(response.get_header("retry-after"), response.status)
                    log.warning(
                        "upstream answered %d (request id %s)",
                        response.status,
                        request_id or "-",
                        extra={"upstream_status": response.status, "request_id": request_id},
                    )
                    raise UpstreamError(response.status, retry)
                data = from_json(await _bounded(response))
        except (PyreqwestError, ValueError) as exc:
            log.warning("upstream unreachable or garbled: %s", type(exc).__name__)
            raise UpstreamError(0, 5.0) from None
        try:
            session_out = data.get("session") or {}
            return Minted(
                str(data["value"]), int(data["expires_at"]), dict(session_out), request_id
            )
        except (AttributeError, TypeError, KeyError, ValueError):
            log.warning("upstream answered 200 without a key (request id %s)", request_id or "-")
            raise UpstreamError(502, 5.0) from None

    async def shutdown_dates(self) -> dict[str, date | None]:
        """``GET /v1/models``: each model's announced ``shutdown_date`` (``UpstreamError`` if
        the upstream cannot say)."""
        from provisioning.models import parse_models_list

        try:
            request = (
                self._session()
                .get(f"{self.base_url.rstrip('/')}/v1/models")
                .header("Authorization", f"Bearer {self.api_key}", is_sensitive=True)
                .build()
            )
            response = await request.send()
            if response.status != 200:
                raise UpstreamError(response.status, _retry_after(None, response.status))
            return parse_models_list(from_json(bytes(await response.bytes())))
        except (PyreqwestError, ValueError):
            raise UpstreamError(0, 5.0) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


@functools.lru_cache(maxsize=65536)
def safety_identifier(device_id: str) -> str:
    """What OpenAI sees of a device: a stable hash of its id (never the id itself)."""
    return hashlib.sha256(f"appliance-device:{device_id}".encode()).hexdigest()[:32]


async def _bounded(response: Response) -> bytes:
    """The body, read up to ``MAX_BODY`` (``ValueError`` past it: never buffered whole)."""
    length = response.get_header("content-length") or "0"
    if not length.isdigit() or int(length) > MAX_BODY:
        raise ValueError("upstream body too large")
    body = bytearray()
    reader = response.body_reader
    while (chunk := await reader.read_chunk()) is not None:
        body += bytes(chunk)
        if len(body) > MAX_BODY:
            raise ValueError("upstream body too large")
    return bytes(body)


def _retry_after(header: str | None, status: int) -> float:
    """Seconds from the upstream's ``Retry-After``, within 1 s – ``MAX_RETRY_AFTER_S`` (an
    HTTP date or garbage: the default)."""
    default = 5.0 if status >= 500 else 2.0
    try:
        seconds = float(header) if header and len(header) <= 16 else default
    except ValueError:
        return default
    if math.isnan(seconds):
        return default
    return min(MAX_RETRY_AFTER_S, max(1.0, seconds))

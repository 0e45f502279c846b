"""Ephemeral Realtime keys: what the device needs to open a call, and where it gets one.

The provisioning server mints keys (``ek_…``) upstream and hands them to the device
together with the Realtime base URL to call. A key may open several calls until it
expires, so the device caches one until shortly before ``expires_at``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class EphemeralKey:
    """A minted client secret. ``value`` is a secret: never log it."""

    value: str = field(repr=False)
    expires_at: float
    """Unix seconds after which the key can no longer open calls."""
    realtime_base: str
    """Base URL of the Realtime service, e.g. ``https://api.openai.com``; calls go to
    ``{realtime_base}/v1/realtime/calls``."""
    session: dict[str, Any] = field(default_factory=dict)
    """The session config the key carries (as returned by ``client_secrets``)."""


class KeySource(Protocol):
    """Anything that can hand the device a fresh ephemeral key."""

    async def get_key(self) -> EphemeralKey:
        """Return a key valid for at least a few more seconds.

        Raises ``ProvisioningError`` (or a subclass) when no key can be had; its
        ``retry_after`` says when to try again if the server said so.
        """
        ...


class CachedKeySource:
    """Wraps a ``KeySource`` and reuses a key until ``margin_s`` before it expires.

    Concurrent callers share one in-flight fetch.
    """

    def __init__(
        self,
        inner: KeySource,
        margin_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._margin_s = margin_s
        self._clock = clock
        self._key: EphemeralKey | None = None
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the cached key (e.g. after the service refused it)."""
        self._key = None

    async def get_key(self) -> EphemeralKey:
        async with self._lock:
            key = self._key
            if key is None or key.expires_at - self._margin_s <= self._clock():
                key = await self._inner.get_key()
                self._key = key
            return key


class StaticKeySource:
    """A fixed key: for ``appliance check`` with a pasted key, tests, and single-user setups."""

    def __init__(self, key: EphemeralKey) -> None:
        self._key = key

    async def get_key(self) -> EphemeralKey:
        return self._key

"""Let aiortc gather loopback candidates (tests, the demo, single-host setups).

aioice skips 127.0.0.1 when it lists host addresses, so two peers on one machine with
no other interface could never connect. ``allow_loopback()`` patches aioice's address
lister once per process to add the loopback address. Production devices never call it.
"""

from __future__ import annotations

import aioice.ice

_original = aioice.ice.get_host_addresses


def _with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses: list[str] = list(_original(use_ipv4, use_ipv6))
    if use_ipv4 and "127.0.0.1" not in addresses:
        addresses.insert(0, "127.0.0.1")
    return addresses


def allow_loopback() -> None:
    """Idempotently make aiortc offer 127.0.0.1 as a host candidate."""
    aioice.ice.get_host_addresses = _with_loopback


def loopback_allowed() -> bool:
    return aioice.ice.get_host_addresses is _with_loopback

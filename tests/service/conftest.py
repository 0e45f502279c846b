"""Fixtures shared by the service tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioning.server import ProvisioningServer, Settings


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ProvisioningServer]:
    """A provisioning server on SQLite in ``tmp_path``, on a free loopback port."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'p.db'}", openai_api_key="sk-x", port=0
    )
    async with ProvisioningServer(settings) as srv:
        yield srv

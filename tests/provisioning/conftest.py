"""Fixtures shared by the provisioning tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from provisioning.server import ProvisioningServer, Settings
from provisioning.standin import StandIn, StandInConfig
from provisioning.store import make_engine
from tests.conftest import require

STANDIN_KEY = "sk-standin-provisioning-test"
"""The stand-in's standard key: the secret the provisioning server holds in these tests."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'prov.db'}"
    url = os.environ.get("APPLIANCE_TEST_PG_URL")
    require(url is not None, "PostgreSQL (APPLIANCE_TEST_PG_URL)")
    assert url is not None
    engine = make_engine(url)
    everything = MetaData()
    everything.reflect(engine)  # every table, also ones a newer schema no longer has
    everything.drop_all(engine)
    engine.dispose()
    return url


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ProvisioningServer]:
    """A provisioning server on SQLite with the stand-in as its upstream."""
    async with StandIn(StandInConfig(api_key=STANDIN_KEY)) as standin:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'server.db'}",
            upstream_url=standin.base_url,
            openai_api_key=STANDIN_KEY,
            port=0,
        )
        async with ProvisioningServer(settings) as srv:
            yield srv

"""Fixtures shared by the provisioning tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from appliance.identity import Identity, enroll
from provisioning.server import ProvisioningServer, Settings
from provisioning.store import make_engine
from standin import StandIn, StandInConfig
from tests.conftest import require

STANDIN_KEY = "sk-standin-provisioning-test"
"""The stand-in's standard key: the secret the provisioning server holds in these tests."""
STANDARD_KEY = "sk-standin-" + secrets.token_hex(12)
"""The standard key of the ``standin`` fixture (random: tests look for it in what leaks)."""


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


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    """A stand-in whose standard key is ``STANDARD_KEY``."""
    async with StandIn(StandInConfig(api_key=STANDARD_KEY)) as s:
        yield s


@asynccontextmanager
async def serving(db_url: str, standin: StandIn) -> AsyncIterator[ProvisioningServer]:
    """A provisioning server on ``db_url`` holding ``STANDARD_KEY``, ``standin`` upstream."""
    settings = Settings(
        database_url=db_url, upstream_url=standin.base_url, openai_api_key=STANDARD_KEY, port=0
    )
    async with ProvisioningServer(settings) as srv:
        yield srv


async def enrolled(server: ProvisioningServer, tmp_path: Path, name: str = "kitchen") -> Identity:
    """A device enrolled into the ``default`` group, its files under ``tmp_path / name``."""
    token = server.store.create_token("default")
    return await enroll(server.base_url, token, tmp_path / name, name)

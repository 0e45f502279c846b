"""Fixtures shared by the provisioning tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provisioning.store import Base, make_engine
from tests.conftest import require


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'prov.db'}"
    url = os.environ.get("APPLIANCE_TEST_PG_URL")
    require(url is not None, "PostgreSQL (APPLIANCE_TEST_PG_URL)")
    assert url is not None
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    engine.dispose()
    return url

"""schemathesis over the server's own OpenAPI schema, with all its checks: no 5xx; every
status, content type and header documented; schema-valid requests accepted, invalid ones
refused."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from provisioning.server import Settings, create_app

pytestmark = pytest.mark.slow  # schemathesis over the whole API

_db = Path(tempfile.mkdtemp(prefix="schemathesis-")) / "fuzz.db"
app = create_app(
    Settings(
        database_url=f"sqlite:///{_db}", upstream_url="http://127.0.0.1:9", openai_api_key="sk-x"
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_schema(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate()

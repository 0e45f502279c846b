"""schemathesis over the server's own OpenAPI schema: no input produces a 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from provisioning.server import Settings, create_app

_db = Path(tempfile.mkdtemp(prefix="schemathesis-")) / "fuzz.db"
app = create_app(
    Settings(
        database_url=f"sqlite:///{_db}", upstream_url="http://127.0.0.1:9", openai_api_key="sk-x"
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case[Any]) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)

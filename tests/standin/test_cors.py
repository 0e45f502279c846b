"""Browsers call the stand-in from another origin, as they call the real service."""

from __future__ import annotations

import httpx
import pytest

from standin import StandIn
from tests.standin.conftest import API_KEY

ORIGIN = "http://127.0.0.1:1"


@pytest.mark.parametrize("path", ["/v1/realtime/calls", "/v1/realtime/client_secrets"])
async def test_a_preflight_is_allowed(standin: StandIn, path: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.options(
            f"{standin.base_url}{path}",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-openai-agents-sdk",
            },
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "content-type", "x-openai-agents-sdk"):
        assert name in allowed


async def test_a_cross_origin_reply_exposes_location(standin: StandIn) -> None:
    """The official WebRTC client reads the call id from ``Location``: it must be exposed."""
    async with httpx.AsyncClient() as http:
        refused = await http.post(
            f"{standin.base_url}/v1/realtime/calls",
            headers={"Origin": ORIGIN, "Content-Type": "application/sdp"},
            content=b"v=0",
        )
        minted = await http.post(
            f"{standin.base_url}/v1/realtime/client_secrets",
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {API_KEY}"},
            json={"session": {"type": "realtime"}},
        )
    assert refused.status_code == 401  # errors carry CORS headers too, so a page can read them
    assert refused.headers["access-control-allow-origin"] == "*"
    assert "location" in refused.headers["access-control-expose-headers"].lower()
    assert minted.status_code == 200
    assert minted.headers["access-control-allow-origin"] == "*"


async def test_a_request_without_origin_gets_no_cors_headers(standin: StandIn) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{standin.base_url}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"session": {"type": "realtime"}},
        )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers

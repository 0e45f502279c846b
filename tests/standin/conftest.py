from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from standin import StandIn, StandInConfig

API_KEY = "sk-standin-test"


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


async def mint(base_url: str, session: dict[str, object] | None = None, seconds: int = 600) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base_url}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={
                "expires_after": {"anchor": "created_at", "seconds": seconds},
                "session": session or {"type": "realtime"},
            },
        )
    response.raise_for_status()
    return str(response.json()["value"])


@asynccontextmanager
async def scripted(folder: Path, script: str) -> AsyncIterator[StandIn]:
    """A stand-in whose "model" follows ``script`` (the rules of script.toml)."""
    path = folder / "script.toml"
    path.write_text(script)
    async with StandIn(StandInConfig(api_key=API_KEY, script=path)) as server:
        yield server

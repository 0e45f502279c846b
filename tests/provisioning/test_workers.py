"""`provisioning serve --workers 2`: two processes, one database, limits that still hold."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from appliance.errors import RateLimited
from appliance.identity import enroll, public_key_b64
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.store import Device, Store, hash_token
from standin import StandIn, StandInConfig
from tests.standin.conftest import API_KEY
from tests.waiting import OutputLines

pytestmark = pytest.mark.slow  # multi-process servers

LIMIT = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=API_KEY)) as server:
        yield server


@pytest.fixture
def workers(db_url: str, standin: StandIn, tmp_path: Path) -> Iterator[str]:
    store = Store(db_url)
    store.ensure_group("default", limits={"device_per_minute": LIMIT})
    store.close()
    port = free_port()
    env = {
        **os.environ,
        "PROVISIONING_DATABASE_URL": db_url,
        "PROVISIONING_UPSTREAM_URL": standin.base_url,
        "PROVISIONING_OPENAI_API_KEY": API_KEY,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioning", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    output = OutputLines(proc.stderr, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        # uvicorn logs this once per worker, when it accepts requests
        up = output.wait_for("Application startup complete", count=2)
        assert up, "".join(output.lines)[-2000:]
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        output.join()


async def test_limits_hold_across_worker_processes(
    workers: str, db_url: str, tmp_path: Path
) -> None:
    store = Store(db_url)
    token = store.create_token("default", label="workers")
    store.close()
    identity = await enroll(workers, token, tmp_path / "state", "kitchen")
    keys = ProvisioningKeySource(identity)

    async def mint() -> str:
        try:
            await keys.get_key()
        except RateLimited:
            return "limited"
        return "ok"

    # fresh connections spread over both workers
    outcomes = await asyncio.gather(*(mint() for _ in range(3 * LIMIT)))
    assert outcomes.count("ok") == LIMIT, outcomes
    assert outcomes.count("limited") == 2 * LIMIT


@pytest.mark.parametrize("uses", [1, 3])
async def test_a_token_is_claimed_at_most_its_uses_across_workers(
    workers: str, db_url: str, uses: int
) -> None:
    """50 claims of one token at once, over fresh connections spread across both workers:
    exactly ``uses`` winners, and the token row agrees."""
    store = Store(db_url)
    token = store.create_token("default", max_uses=uses, label="race")
    store.close()

    async def claim(n: int) -> int:
        key = public_key_b64(Ed25519PrivateKey.generate())
        body = {"token": token, "public_key": key, "name": f"race-{n}"}
        async with httpx.AsyncClient(timeout=30) as http:
            return (await http.post(f"{workers}/v1/devices/enroll", json=body)).status_code

    codes = await asyncio.gather(*(claim(n) for n in range(50)))
    assert sorted(codes) == [201] * uses + [409] * (50 - uses)
    store = Store(db_url)
    try:
        state = store.token_state(hash_token(token))
        assert state is not None
        assert state[:2] == (uses, uses)
        with store.session() as db:
            assert (
                len(db.scalars(select(Device).where(Device.enrolled_with.is_not(None))).all())
                == uses
            )
    finally:
        store.close()

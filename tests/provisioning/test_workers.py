"""`provisioning serve --workers 2`: two processes, one database, limits that still hold."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from appliance.errors import RateLimited
from appliance.identity import enroll
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.standin import StandIn, StandInConfig
from provisioning.store import Store
from tests.standin.conftest import API_KEY

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
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioning", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


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

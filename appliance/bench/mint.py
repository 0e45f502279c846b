"""Mint benchmark: the provisioning server (one uvicorn worker, SQLite) minting keys with
the stand-in as upstream, both in their own processes; the load generator runs here.

Figures: mints/s as fast as they go with 32 and with 128 requests in flight; the server's CPU
time per mint (what one core of it would sustain); mints per database transaction; the CPU
the stand-in and the load generator spend per mint; p50/p99 latency at a fixed 200/s.
Server, stand-in and load generator share this machine's cores, so mints/s is bounded by all
three, while CPU per mint is the server's own. The load generator is aiohttp, whose client
costs far less CPU per request than httpx's at this concurrency (httpx would mostly measure
itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil

from appliance.identity import Identity, enroll

KEY = "sk-standin-bench"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                await http.get(url)
                return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@contextlib.asynccontextmanager
async def _servers(work: Path) -> AsyncIterator[tuple[str, str, int, int]]:
    standin_port, server_port = _port(), _port()
    db = f"sqlite:///{work / 'bench.db'}"
    env = {
        **os.environ,
        "PROVISIONING_OPENAI_API_KEY": KEY,
        "PROVISIONING_DATABASE_URL": db,
        "PROVISIONING_UPSTREAM_URL": f"http://127.0.0.1:{standin_port}",
    }
    log = (work / "servers.log").open("ab")
    quiet = {"stdout": log, "stderr": log}
    standin = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning.standin",
        "--port",
        str(standin_port),
        "--api-key",
        KEY,
        **quiet,  # type: ignore[arg-type]
    )
    # groups/limits before the server starts, through the CLI (same database)
    setup = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "--database-url",
        db,
        "group",
        "set",
        "default",
        "--limits",
        '{"device_per_minute": 1000000, "device_per_day": 1000000, "group_per_minute": 1000000}',
        env=env,
        **quiet,  # type: ignore[arg-type]
    )
    await setup.wait()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "serve",
        "--port",
        str(server_port),
        env=env,
        **quiet,  # type: ignore[arg-type]
    )
    try:
        await _wait(f"http://127.0.0.1:{standin_port}/")
        await _wait(f"http://127.0.0.1:{server_port}/healthz")
        yield f"http://127.0.0.1:{server_port}", db, server.pid, standin.pid
    finally:
        for proc in (server, standin):
            proc.terminate()
            await proc.wait()


async def _one(http: aiohttp.ClientSession, url: str, token: str, latencies: list[float]) -> int:
    started = time.perf_counter()
    try:
        async with http.post(url, json={}, headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
    except (aiohttp.ClientError, TimeoutError):
        return 0
    latencies.append(time.perf_counter() - started)
    return r.status


def _ed25519_us() -> float:
    """This machine's speed in a unit that matters here (every mint verifies one signature);
    the figures below scale with it, and it drifts by tens of percent on a shared VM."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    signature, public = key.sign(b"x" * 200), key.public_key()
    started = time.perf_counter()
    for _ in range(2000):
        public.verify(signature, b"x" * 200)
    return (time.perf_counter() - started) / 2000 * 1e6


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _transactions(base: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{base}/metrics")).text
    for line in text.splitlines():
        if line.startswith("provisioning_ledger_transactions_total "):
            return float(line.split()[1])
    raise RuntimeError("/metrics has no provisioning_ledger_transactions_total")


@dataclass(frozen=True)
class _Burst:
    in_flight: int
    sent: int
    ok: int
    rate: float
    server_ms: float
    """Server CPU per mint."""
    standin_ms: float
    load_ms: float
    per_tx: float


async def _burst(
    http: aiohttp.ClientSession,
    url: str,
    identities: list[Identity],
    count: int,
    in_flight: int,
    base: str,
    pid: int,
    standin_pid: int,
) -> _Burst:
    """``count`` mints as fast as they go with ``in_flight`` at a time (JWTs signed first)."""
    tokens = [identities[i % len(identities)].token() for i in range(count)]
    sem = asyncio.Semaphore(in_flight)

    async def bounded(token: str) -> int:
        async with sem:
            return await _one(http, url, token, [])

    cpu0, tx0 = _cpu_s(pid), await _transactions(base)
    standin0, load0 = _cpu_s(standin_pid), time.process_time()
    started = time.perf_counter()
    codes = await asyncio.gather(*(bounded(t) for t in tokens))
    elapsed = time.perf_counter() - started
    ok = codes.count(200)
    return _Burst(
        in_flight=in_flight,
        sent=count,
        ok=ok,
        rate=ok / elapsed,
        server_ms=(_cpu_s(pid) - cpu0) / count * 1000,
        standin_ms=(_cpu_s(standin_pid) - standin0) / count * 1000,
        load_ms=(time.process_time() - load0) / count * 1000,
        per_tx=ok / max(1.0, await _transactions(base) - tx0),
    )


async def _run() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with _servers(work) as (base, db, pid, standin_pid):
            from provisioning.store import Store

            store = Store(db)
            identities: list[Identity] = []
            for i in range(20):
                token = store.create_token("default")
                identities.append(await enroll(base, token, work / f"d{i}", f"bench-{i}"))
            store.close()

            url = f"{base}/v1/realtime/keys"
            connector = aiohttp.TCPConnector(limit=128)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                await _burst(http, url, identities, 200, 32, base, pid, standin_pid)  # warm-up
                bursts = [
                    await _burst(http, url, identities, 5000, n, base, pid, standin_pid)
                    for n in (32, 128)
                ]
                # fixed rate: 200 requests/s for 10 s
                fixed: list[float] = []
                tokens = [identities[i % 20].token() for i in range(2000)]
                tasks = []
                t0 = time.perf_counter()
                for i, tok in enumerate(tokens):
                    await asyncio.sleep(max(0.0, t0 + i / 200 - time.perf_counter()))
                    tasks.append(asyncio.create_task(_one(http, url, tok, fixed)))
                fixed_codes = await asyncio.gather(*tasks)
            if any(b.ok < b.sent for b in bursts) or fixed_codes.count(200) < len(fixed_codes):
                tail = (work / "servers.log").read_text(errors="replace")[-3000:]
                print(f"some requests failed; servers' log tail:\n{tail}", file=sys.stderr)
    q = statistics.quantiles(fixed, n=100)
    busiest = bursts[-1]
    return [
        ("machine reference: one Ed25519 verify", f"{_ed25519_us():.0f} µs"),
        *(
            (f"mints/s, one worker, {b.in_flight} in flight", f"{b.rate:.0f} ({b.ok}/{b.sent} ok)")
            for b in bursts
        ),
        (
            f"server CPU per mint ({busiest.in_flight} in flight)",
            f"{busiest.server_ms:.2f} ms (one core: {1000 / busiest.server_ms:.0f} mints/s)",
        ),
        ("mints per database transaction", " / ".join(f"{b.per_tx:.1f}" for b in bursts)),
        (
            "CPU per mint elsewhere",
            f"stand-in {busiest.standin_ms:.2f} ms, load generator {busiest.load_ms:.2f} ms",
        ),
        (
            "latency at a fixed 200/s",
            f"p50 {statistics.median(fixed) * 1000:.1f} ms, "
            f"p99 {q[98] * 1000:.1f} ms ({fixed_codes.count(200)} ok)",
        ),
    ]


def run() -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = asyncio.run(_run())
    return result

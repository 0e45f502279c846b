"""Mint benchmark: the provisioning server (one uvicorn worker, SQLite) minting keys with
the stand-in as upstream, each in its own process, on this machine's cores.

Figures: mints/s as fast as they go with 32 and with 128 requests in flight; the server's CPU
time per mint (what one core of it would sustain); mints per database transaction; the CPU
the stand-in and the load generator spend per mint, and how busy the machine was; p50/p99
latency at a fixed 200/s; and mints/s at 128 in flight while 100 malformed requests a second
(issue 15's attacks: bad ``kid``s, claims of the wrong type, oversized bodies and headers,
names that are not printable, nesting) arrive alongside, against a clean run just before.

The load for the bursts comes from wrk (C; ``mint.lua`` hands every request its own
pre-signed JWT): a Python client took a large share of the same cores itself (docs/server.md).
The fixed-rate phase is paced from Python (pyreqwest), which is plenty at 200/s. Server,
stand-in and load generator share the cores, so mints/s is bounded by all three, while CPU
per mint is the server's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError

from appliance.identity import Identity, enroll

KEY = "sk-standin-bench"
LUA = Path(__file__).with_name("mint.lua")
BURST_S = 10
FLOOD_RATE = 100
"""Malformed requests a second in the flooded burst."""
FLOOD_PAIRS = 2
"""Clean and flooded bursts, run alternately this many times each."""
MAX_RATE = 4000
"""Tokens signed per second of a burst: more than a run can use (past them, replays)."""


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


def _wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError(
            "wrk is not installed: it is the mint bench's load generator (apt install wrk)"
        )
    return found


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
        "standin",
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


def _ed25519_us() -> float:
    """This machine's speed in a unit that matters here (every mint verifies one signature);
    the figures below scale with it, and it drifts by tens of percent on a shared VM. (OpenSSL's
    verify, as in earlier runs; the server itself verifies with libsodium, which is faster.)"""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    signature, public = key.sign(b"x" * 200), key.public_key()
    started = time.perf_counter()
    for _ in range(2000):
        public.verify(signature, b"x" * 200)
    return (time.perf_counter() - started) / 2000 * 1e6


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended (wrk, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine() -> tuple[int, int]:
    """(all, idle) CPU ticks of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # idle + iowait


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
    p50_ms: float
    p99_ms: float
    server_ms: float
    """Server CPU per mint."""
    standin_ms: float
    load_ms: float
    busy: float
    """Fraction of the machine's CPU in use."""
    per_tx: float


async def _burst(
    work: Path,
    base: str,
    identities: list[Identity],
    in_flight: int,
    seconds: int,
    pid: int,
    standin_pid: int,
) -> _Burst:
    """Mints as fast as they go for ``seconds`` with ``in_flight`` connections (JWTs first)."""
    tokens = work / f"tokens-{in_flight}-{seconds}"
    count = seconds * MAX_RATE
    tokens.write_text("".join(identities[i % len(identities)].token() + "\n" for i in range(count)))
    cpu0, standin0, tx0 = _cpu_s(pid), _cpu_s(standin_pid), await _transactions(base)
    load0, machine0 = _children_cpu_s(), _machine()
    wrk = await asyncio.create_subprocess_exec(
        _wrk(),
        "-t1",  # one Lua state: the tokens are handed out once each
        f"-c{in_flight}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        base,
        "--",
        str(tokens),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await wrk.communicate())[0].decode(errors="replace")
    machine1 = _machine()
    match = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
    if wrk.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{out[-2000:]}")
    r = {key: int(value) for key, value in (kv.split("=") for kv in match.group(1).split())}
    failed = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    sent = r["requests"]
    if sent > count:
        print(f"mint bench: {sent - count} requests reused a token (sign more)", file=sys.stderr)
    return _Burst(
        in_flight=in_flight,
        sent=sent,
        ok=sent - failed,
        rate=(sent - failed) / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        server_ms=(_cpu_s(pid) - cpu0) / sent * 1000,
        standin_ms=(_cpu_s(standin_pid) - standin0) / sent * 1000,
        load_ms=(_children_cpu_s() - load0) / sent * 1000,
        busy=1 - (machine1[1] - machine0[1]) / max(1, machine1[0] - machine0[0]),
        per_tx=(sent - failed) / max(1.0, await _transactions(base) - tx0),
    )


def _malformed(identity: Identity) -> list[tuple[str, dict[str, str], bytes]]:
    """Requests that must each be refused on their own: ``(path, headers, body)``."""
    import base64
    import json

    import jwt

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def raw(header: str) -> str:
        return f"{b64(header.encode())}.{b64(b'{}')}.{b64(bytes(64))}"

    def signed(**claims: object) -> str:
        now = int(time.time())
        base: dict[str, object] = {"iss": identity.device_id, "sub": identity.device_id}
        base |= {"aud": "appliance-provisioning", "iat": now, "exp": now + 30, "jti": "j"}
        return jwt.encode(
            base | claims,
            identity.private_key,
            algorithm="EdDSA",
            headers={"kid": identity.device_id},
        )

    now = int(time.time())
    mint, enroll = "/v1/realtime/keys", "/v1/devices/enroll"
    key = b64(bytes(32))
    return [
        (mint, {"Authorization": "Bearer " + raw('{"alg":"EdDSA","kid":"\\ud800"}')}, b"{}"),
        (mint, {"Authorization": "Bearer " + raw('{"alg":"EdDSA","kid":"d\\u0000"}')}, b"{}"),
        (mint, {"Authorization": "Bearer " + signed(iat=str(now), exp=str(now + 30))}, b"{}"),
        (mint, {"Authorization": "Bearer " + signed(jti="j" * 100)}, b"{}"),
        (mint, {"Authorization": "Bearer x.y.z", "X-Padding": "p" * 20_000}, b"{}"),
        (enroll, {}, b"x" * 70_000),
        (enroll, {}, json.dumps({"token": "t", "public_key": key, "name": "\u202e"}).encode()),
        (enroll, {}, b'{"name": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
    ]


async def _flood(base: str, identity: Identity, rate: int, stop: asyncio.Event) -> int:
    """Send the malformed requests round and round at ``rate`` a second until ``stop``;
    how many were answered with a 5xx or not at all (each must be its own 4xx)."""
    requests = _malformed(identity)
    failures = 0
    builder = ClientBuilder().timeout(timedelta(seconds=30)).max_connections(16)
    async with builder.build() as http:

        async def one(path: str, headers: dict[str, str], body: bytes) -> None:
            nonlocal failures
            request = http.post(base + path).body_bytes(body)
            for name, value in headers.items():
                request = request.header(name, value)
            try:
                response = await request.build().send()
                if response.status >= 500:
                    failures += 1
            except PyreqwestError:
                failures += 1

        tasks = []
        t0 = time.perf_counter()
        i = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(*requests[i % len(requests)])))
            i += 1
        await asyncio.gather(*tasks)
    return failures


async def _flooded_burst(
    work: Path, base: str, identities: list[Identity], pid: int, standin_pid: int
) -> tuple[_Burst, int]:
    """A 128-in-flight burst with ``FLOOD_RATE`` malformed requests a second alongside."""
    stop = asyncio.Event()
    flood = asyncio.create_task(_flood(base, identities[-1], FLOOD_RATE, stop))
    try:
        burst = await _burst(work, base, identities[:-1], 128, BURST_S, pid, standin_pid)
    finally:
        stop.set()
        failures = await flood
    return burst, failures


async def _one(http: Client, url: str, token: str, latencies: list[float]) -> int:
    started = time.perf_counter()
    try:
        request = http.post(url).header("Authorization", f"Bearer {token}").body_bytes(b"{}")
        response = await request.build().send()
        await response.bytes()
    except PyreqwestError:
        return 0
    latencies.append(time.perf_counter() - started)
    return response.status


async def _fixed_rate(url: str, identities: list[Identity], rate: int, seconds: int) -> list[float]:
    """Latencies of ``rate`` requests a second for ``seconds``, after one second at that rate
    that is not counted (the client's connections); raises if any failed."""
    latencies: list[float] = []
    warm: list[float] = []
    tokens = [identities[i % len(identities)].token() for i in range(rate * (seconds + 1))]
    builder = ClientBuilder().timeout(timedelta(seconds=30)).max_connections(64)
    async with builder.build() as http:
        tasks = []
        t0 = time.perf_counter()
        for i, token in enumerate(tokens):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            into = warm if i < rate else latencies
            tasks.append(asyncio.create_task(_one(http, url, token, into)))
        codes = await asyncio.gather(*tasks)
    if codes.count(200) < len(codes):
        raise RuntimeError(f"fixed rate: {len(codes) - codes.count(200)} of {len(codes)} failed")
    return latencies


async def _run() -> list[tuple[str, str]]:
    _wrk()  # before anything starts
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
            try:
                await _burst(work, base, identities, 32, 2, pid, standin_pid)  # warm-up
                bursts = [
                    await _burst(work, base, identities, n, BURST_S, pid, standin_pid)
                    for n in (32, 128)
                ]
                fixed = await _fixed_rate(f"{base}/v1/realtime/keys", identities, 200, 10)
                clean, flooded, flood_failures = [], [], 0
                for _pair in range(FLOOD_PAIRS):  # interleaved: the machine's load drifts
                    clean.append(
                        await _burst(work, base, identities[:-1], 128, BURST_S, pid, standin_pid)
                    )
                    burst, failures = await _flooded_burst(work, base, identities, pid, standin_pid)
                    flooded.append(burst)
                    flood_failures += failures
            except RuntimeError:
                tail = (work / "servers.log").read_text(errors="replace")[-3000:]
                print(f"servers' log tail:\n{tail}", file=sys.stderr)
                raise
    q = statistics.quantiles(fixed, n=100)
    clean_rate = statistics.mean(b.rate for b in clean)
    flooded_rate = statistics.mean(b.rate for b in flooded)
    busiest = bursts[-1]
    return [
        ("machine reference: one Ed25519 verify (OpenSSL)", f"{_ed25519_us():.0f} µs"),
        *(
            (
                f"mints/s, one worker, {b.in_flight} in flight",
                f"{b.rate:.0f} ({b.ok}/{b.sent} ok; p50 {b.p50_ms:.0f} ms, p99 {b.p99_ms:.0f} ms)",
            )
            for b in bursts
        ),
        (
            f"server CPU per mint ({busiest.in_flight} in flight)",
            f"{busiest.server_ms:.2f} ms (one core: {1000 / busiest.server_ms:.0f} mints/s)",
        ),
        ("mints per database transaction", " / ".join(f"{b.per_tx:.1f}" for b in bursts)),
        (
            "CPU per mint elsewhere",
            f"stand-in {busiest.standin_ms:.2f} ms, load generator (wrk) {busiest.load_ms:.2f} ms",
        ),
        (
            f"machine CPU in use ({busiest.in_flight} in flight)",
            f"{busiest.busy:.0%} of {os.cpu_count()} cores",
        ),
        (
            "latency at a fixed 200/s",
            f"p50 {statistics.median(fixed) * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms "
            f"({len(fixed)} ok)",
        ),
        (
            f"mints/s, 128 in flight, {FLOOD_RATE} malformed/s alongside",
            f"{flooded_rate:.0f} ({flooded_rate / clean_rate:.0%} of {clean_rate:.0f} clean, "
            f"{FLOOD_PAIRS} runs of each interleaved; {sum(b.ok for b in flooded)}/"
            f"{sum(b.sent for b in flooded)} mints ok; malformed answered 5xx or not at all: "
            f"{flood_failures})",
        ),
    ]


def run() -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = asyncio.run(_run())
    return result

"""Fleet console at 10,000 devices (SQLite): the heartbeat-history hook's cost per heartbeat,
database bytes per device-day, and how long the console's reads take.

A day of history is written through ``History.record`` (what the mint ledger calls per batch),
one report per device per 15-minute bucket in batches of 500: the rows a day leaves are the
same at one heartbeat a minute (a bucket is one row however many beats it sums), only the
upserts are fewer. ``BENCH_CONSOLE_DEVICES`` changes the fleet size; with
``BENCH_CONSOLE_PG_URL`` the sizes and the overview's reads are measured on PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic_core import to_json
from sqlalchemy import func, insert, select

BATCH = 500
STANDING = ("offline_after", "state", "in_error")
"""The devices' columns ``standing`` fills (the ledger, with each heartbeat)."""


def _health(i: int, step: int) -> dict[str, Any]:
    return {
        "version": "0.3.0",
        "uptime_s": 60 + step * 900,
        "state": "error" if i % 97 == 0 else "idle",
        "heartbeat_s": 60,
        "turns": step,
        "last_turn_latency_ms": 400 + (i * 7 + step * 13) % 1600,
        "reconnects": step // 20,
        "wakes": step,
        "false_wakes": 2 * step if i % 50 == 0 else step // 40,  # 2% wake falsely
        "erle_db": 20 + (i + step) % 10,
        "last_error": "mic gone" if i % 97 == 0 else None,
    }


def _timed(fn: Any, runs: int = 5) -> float:
    """Median wall time of ``fn()`` in ms."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _seed_day(store: Any, ids: list[str], now: float, steps: int = 96) -> tuple[int, float]:
    """Write the last ``steps`` 15-minute buckets (a day) of heartbeats for ``ids`` through
    the history hook: (reports, seconds)."""
    from provisioning.history import History

    hook = History(store.engine.dialect.name)
    reports, spent = 0, 0.0
    for step in range(96 - steps, 96):
        at = now - 86400 + step * 900
        for lo in range(0, len(ids), BATCH):
            batch = [(ids[i], _health(i, step)) for i in range(lo, min(lo + BATCH, len(ids)))]
            began = time.perf_counter()
            with store.engine.begin() as conn:
                cur = conn.connection.dbapi_connection.cursor()
                hook.record(cur, batch, at)
                spent += time.perf_counter() - began
                # as the ledger does: the next report's increase is counted from this one
                cur.executemany(
                    hook.sql("UPDATE devices SET health = ? WHERE id = ?"),
                    [(to_json(report).decode(), device_id) for device_id, report in batch],
                )
            reports += len(batch)
    return reports, spent


def _add_devices(store: Any, ids: list[str], now: float) -> None:
    from provisioning.history import standing
    from provisioning.store import Device

    with store.session.begin() as db:
        db.execute(
            insert(Device),
            [
                {
                    "id": d,
                    "name": f"unit-{i}",
                    "group": "default",
                    "public_key": f"k{i}",
                    "created_at": now - 86400,
                    "last_seen": now - (3600 if i % 20 == 0 else 30),
                    "health": _health(i, 96),
                    "enabled": True,
                    "revoked": False,
                    **dict(zip(STANDING, standing(_health(i, 96)), strict=True)),
                }
                for i, d in enumerate(ids)
            ],
        )


def postgres_rows(url: str, devices: int, fleet_devices: int) -> list[tuple[str, str]]:
    """Bytes per device-day on PostgreSQL (``BENCH_CONSOLE_PG_URL``: a scratch database,
    emptied before and after), then the overview's reads at ``fleet_devices`` devices with
    their last two hours of history (all the overview reads)."""
    from sqlalchemy import MetaData, text

    from provisioning.server import Settings, create_app
    from provisioning.store import Store, make_engine

    def wipe() -> None:
        engine = make_engine(url)
        everything = MetaData()
        everything.reflect(engine)
        everything.drop_all(engine)
        engine.dispose()

    wipe()
    store = Store(url)
    try:
        store.ensure_group("default")
        now = time.time()
        ids = [f"dev_{i:012x}" for i in range(devices)]
        _add_devices(store, ids, now)
        reports, spent = _seed_day(store, ids, now)
        with store.engine.connect() as conn:
            conn.execute(text("ANALYZE heartbeat_buckets"))
            size = conn.execute(text("SELECT pg_total_relation_size('heartbeat_buckets')")).scalar()
    finally:
        store.close()
        wipe()
    store = Store(url)
    try:
        app = create_app(Settings(database_url=url, upstream_url="http://127.0.0.1:9"), store)
        store.ensure_group("default")
        ids = [f"dev_{i:012x}" for i in range(fleet_devices)]
        _add_devices(store, ids, now)
        _seed_day(store, ids, now, steps=8)
        with store.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
        reads = _overview_reads(app.state.fleet)
    finally:
        store.close()
        wipe()
    return [
        ("PostgreSQL: devices (1 day each)", f"{devices}"),
        ("PostgreSQL: history hook per heartbeat", f"{spent / reports * 1e6:.0f} µs"),
        (
            "PostgreSQL: table + indexes per device-day",
            f"{int(size or 0) / devices / 1024:.1f} KiB",
        ),
        *((f"PostgreSQL, {fleet_devices} devices: {name}", value) for name, value in reads),
    ]


def _overview_reads(fleet: Any) -> list[tuple[str, str]]:
    """The overview's reads, each timed from the database (medians)."""
    return [
        ("fleet overview (counts + first 50, attention first)", f"{_timed(fleet.overview):.0f} ms"),
        ("counts alone (what the live feed pushes)", f"{_timed(fleet.summary):.0f} ms"),
        (
            "overview page 21 (offset 1000)",
            f"{_timed(lambda: fleet.overview(limit=50, offset=1000)):.0f} ms",
        ),
        (
            "overview filtered (search + status)",
            f"{_timed(lambda: fleet.overview(q='unit-12', status='online')):.0f} ms",
        ),
        ("next offline time (live feed sweep)", f"{_timed(fleet.next_offline):.1f} ms"),
        (
            "devices waking falsely in the last hour (read once a minute)",
            f"{_timed(lambda: _noisy(fleet)):.0f} ms",
        ),
    ]


def _noisy(fleet: Any) -> int:
    with fleet.store.engine.connect() as db:
        return len(fleet.noisy(db, time.time(), fresh=True))


def run() -> list[tuple[str, str]]:
    import httpx
    from prometheus_client import generate_latest

    from provisioning.server import Settings, create_app
    from provisioning.store import HeartbeatBucket, Store

    devices = int(os.environ.get("BENCH_CONSOLE_DEVICES", "10000"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "console.db"
        url = f"sqlite:///{path}"
        store = Store(url)
        app = create_app(Settings(database_url=url, upstream_url="http://127.0.0.1:9"), store)
        now = time.time()
        ids = [f"dev_{i:012x}" for i in range(devices)]
        _add_devices(store, ids, now)
        store.engine.dispose()
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        before = path.stat().st_size
        reports, spent = _seed_day(store, ids, now)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        after = path.stat().st_size
        with store.session() as db:
            rows = db.scalar(select(func.count()).select_from(HeartbeatBucket)) or 0
        per_device_day = (after - before) / devices
        bytes_per_row = (after - before) / max(1, rows)
        steady_rows = 2 * 96 + 8 * 24  # 15-minute buckets kept 2 days, hourly kept 8 days

        async def http_reads() -> tuple[float, float, float, float]:
            admin = store.create_admin()
            transport = httpx.ASGITransport(app=app)
            auth = {"Authorization": f"Bearer {admin}"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://console", headers=auth
            ) as http:
                await http.get("/v1/admin/fleet")  # warm the admin check

                async def median(path: str) -> float:
                    times = []
                    for _ in range(5):
                        began = time.perf_counter()
                        r = await http.get(path)
                        times.append((time.perf_counter() - began) * 1000)
                        assert r.status_code == 200, r.text
                    return statistics.median(times)

                return (
                    await median("/v1/admin/fleet"),
                    await median(f"/v1/admin/devices/{ids[1]}/detail"),
                    await median(f"/v1/admin/devices/{ids[1]}/history?range=24h"),
                    await median("/console"),
                )

        fleet = app.state.fleet
        fleet_ms, detail_ms, history_ms, page_ms = asyncio.run(http_reads())

        metrics_ms = _timed(lambda: generate_latest(app.state.metrics.registry))
        reads = _overview_reads(fleet)
        series_ms = _timed(lambda: fleet.device_history(ids[1], "7d"))
        credential = store.create_admin()
        check_ms = _timed(lambda: store.check_admin(credential))
        store.close()
    pg_url = os.environ.get("BENCH_CONSOLE_PG_URL")
    pg = (
        postgres_rows(pg_url, int(os.environ.get("BENCH_CONSOLE_PG_DEVICES", "1000")), devices)
        if pg_url
        else []
    )
    return [
        ("devices", f"{devices}"),
        ("heartbeats written (1 day, 15 min apart)", f"{reports}"),
        ("history hook per heartbeat", f"{spent / reports * 1e6:.0f} µs (batches of {BATCH})"),
        ("bucket rows after 1 day", f"{rows} ({rows / devices:.0f} per device)"),
        ("database growth per device-day", f"{per_device_day / 1024:.1f} KiB"),
        ("bytes per bucket row (with index)", f"{bytes_per_row:.0f}"),
        (
            "steady state per device (retention)",
            f"{steady_rows} rows ≈ {steady_rows * bytes_per_row / 1024:.0f} KiB",
        ),
        *reads,
        ("device history 7 d query", f"{series_ms:.1f} ms median"),
        ("admin credential check (scrypt, every request)", f"{check_ms:.0f} ms median"),
        ("GET /v1/admin/fleet (counts + first 50)", f"{fleet_ms:.0f} ms median"),
        ("GET device detail", f"{detail_ms:.0f} ms median"),
        ("GET device history 24 h", f"{history_ms:.0f} ms median"),
        ("GET /console (page)", f"{page_ms:.1f} ms median"),
        ("/metrics scrape with fleet gauges", f"{metrics_ms:.0f} ms median"),
        *pg,
    ]

"""Alembic migrations: an empty database upgrades to a schema identical to the models, on
SQLite and PostgreSQL; the store, the CLI and concurrent starts all go through them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, inspect, select, text
from sqlalchemy.engine import make_url

from provisioning import migrations
from provisioning.__main__ import main as cli
from provisioning.store import Base, Device, Store, make_engine
from tests.conftest import require

pytestmark = pytest.mark.slow  # alembic up and down on real databases

HEAD = migrations.head()
TABLES = {
    "admin_keys",
    "audit",
    "devices",
    "enrollment_tokens",
    "groups",
    "mint_counters",
    "used_jti",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new empty database: a SQLite file, or a fresh PostgreSQL database (created
    next to APPLIANCE_TEST_PG_URL's and dropped afterwards, so parallel runs cannot meet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'prov.db'}"
        return
    url = os.environ.get("APPLIANCE_TEST_PG_URL")
    require(url is not None, "PostgreSQL (APPLIANCE_TEST_PG_URL)")
    assert url is not None
    name = "appliance_mig_" + secrets.token_hex(4)
    admin = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_upgrade_of_an_empty_database_matches_the_models(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert migrations.upgrade(engine) == migrations.head() == HEAD
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert migrations.current(conn) == HEAD
            inspector = inspect(conn)
            assert set(inspector.get_table_names()) >= TABLES
            columns = {c["name"]: c for c in inspector.get_columns("devices")}
            assert columns["previous_key"]["nullable"]
            assert columns["previous_until"]["nullable"]
            assert not columns["public_key"]["nullable"]
            assert {fk["referred_table"] for fk in inspector.get_foreign_keys("devices")} == {
                "groups"
            }
        # a second upgrade is a no-op
        assert migrations.upgrade(engine) == HEAD
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine)
        with engine.begin() as conn:
            cfg = migrations.config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        with engine.connect() as conn:
            assert not TABLES & set(inspect(conn).get_table_names())
            assert migrations.current(conn) is None
        migrations.upgrade(engine)
        with engine.connect() as conn:
            assert migrations.differences(conn) == []
    finally:
        engine.dispose()


def test_the_store_creates_its_schema_through_alembic(empty_url: str) -> None:
    store = Store(empty_url)
    try:
        with store.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
        store.ensure_group("default")
        token = store.create_token("default")
        assert token.startswith("enr_")
    finally:
        store.close()


def test_a_dropped_schema_with_a_stale_stamp_is_made_again(empty_url: str) -> None:
    """``metadata.drop_all`` leaves ``alembic_version`` behind (the server tests do this)."""
    Store(empty_url).close()
    engine = make_engine(empty_url)
    Base.metadata.drop_all(engine)
    with engine.connect() as conn:
        assert migrations.current(conn) == HEAD
        assert not inspect(conn).has_table("devices")
    engine.dispose()
    store = Store(empty_url)
    try:
        store.ensure_group("default")
        with store.session() as db:
            assert db.query(Device).count() == 0
    finally:
        store.close()


def test_a_database_from_create_all_is_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)  # how the server made its schema before migrations
    assert migrations.upgrade(engine) == HEAD
    with engine.connect() as conn:
        assert migrations.current(conn) == HEAD
    engine.dispose()


def test_an_unversioned_database_that_differs_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE devices DROP COLUMN previous_until"))
    with pytest.raises(migrations.SchemaMismatch, match="differs from the models"):
        migrations.upgrade(engine)
    with engine.connect() as conn:
        assert migrations.current(conn) is None, "nothing stamped"
    engine.dispose()


def test_model_drift_is_detected(tmp_path: Path) -> None:
    """``differences`` is what this suite relies on: it must see a column the revisions lack."""
    engine = make_engine(f"sqlite:///{tmp_path / 'drift.db'}")
    migrations.upgrade(engine)
    extra = Table("drift_probe", Base.metadata, Column("id", Integer, primary_key=True))
    try:
        with engine.connect() as conn:
            diff = migrations.differences(conn)
    finally:
        Base.metadata.remove(extra)
        engine.dispose()
    assert [d[0] for d in diff] == ["add_table"]


def test_concurrent_starts_upgrade_once(empty_url: str) -> None:
    """Several worker processes starting on an empty database: all succeed, one schema."""
    code = (
        "import sys; from provisioning.store import Store; "
        "s = Store(sys.argv[1]); s.ensure_group('default'); s.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [proc.communicate(timeout=60)[1].decode() for proc in procs]  # every pipe read
    assert [proc.returncode for proc in procs] == [0, 0, 0], errors
    engine = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            assert migrations.current(conn) == HEAD
            assert migrations.differences(conn) == []
    finally:
        engine.dispose()


def test_cli_db_upgrade_and_current(
    empty_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISIONING_DATABASE_URL", raising=False)
    assert cli(["--database-url", empty_url, "db", "current"]) == 0
    assert f"at revision none (newest: {HEAD})" in capsys.readouterr().out
    assert cli(["--database-url", empty_url, "db", "upgrade"]) == 0
    assert f"database at revision {HEAD}" in capsys.readouterr().out
    assert cli(["--database-url", empty_url, "db", "current"]) == 0
    assert f"at revision {HEAD} (newest: {HEAD})" in capsys.readouterr().out


def test_mints_logged_before_the_counters_still_count(empty_url: str) -> None:
    """0001 → 0002 turns the recent ``mint_log`` rows into counters: a device that used its
    minute's limit just before the upgrade is still limited just after it."""
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine, "0001")
        now = time.time()
        log = Table("mint_log", MetaData(), autoload_with=engine)
        with engine.begin() as conn:
            conn.execute(
                log.insert(),
                [{"device_id": "dev_a", "group": "default", "at": now - 5 - i} for i in range(3)]
                + [{"device_id": "dev_a", "group": "default", "at": now - 90000}],  # too old
            )
        assert migrations.upgrade(engine) == HEAD
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT key, count, expires FROM mint_counters")).all()
        totals: dict[str, int] = {}
        for key, count, expires in rows:
            assert expires > now, "only buckets still inside their window are carried"
            totals[key] = totals.get(key, 0) + count
        assert totals == {"d:dev_a": 3, "q:dev_a": 3, "g:default": 3}
    finally:
        engine.dispose()


def test_groups_on_models_with_a_shutdown_date_are_moved(
    empty_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """0002 → models_1: every group's profile leaves the models that shut down in 2027
    (speech and transcription), a realtime profile without a model gets the default; each
    move is audited and logged; other fields and other models stay as they were."""
    engine = make_engine(empty_url)
    profiles = {
        "old": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Be brief.",
            "audio": {
                "input": {"transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"}},
                "output": {"voice": "marin"},
            },
        },
        "mini": {"type": "realtime", "model": "gpt-realtime-mini-2025-12-15"},
        "unnamed": {"type": "realtime"},
        "current": {"type": "realtime", "model": "gpt-realtime-2"},
        "dictation": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "whisper-1"}}},
        },
        "odd": {"type": "realtime", "model": ["?"], "audio": {"input": {"transcription": 1}}},
        "diarize": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe-diarize"}}},
        },
    }
    try:
        migrations.upgrade(engine, "0002")
        groups = Table("groups", MetaData(), autoload_with=engine)
        with engine.begin() as conn:
            conn.execute(
                groups.insert(),
                [{"name": n, "profile": p, "limits": {}} for n, p in profiles.items()],
            )
        with caplog.at_level("WARNING"):
            assert migrations.upgrade(engine) == HEAD
        with engine.connect() as conn:
            after = {n: p for n, p in conn.execute(select(groups.c.name, groups.c.profile))}
            audit = Table("audit", MetaData(), autoload_with=engine)
            moves = [d for (d,) in conn.execute(select(audit.c.detail))]
    finally:
        engine.dispose()
    old = after["old"]
    assert old["model"] == "gpt-realtime-2.1"
    assert old["audio"]["input"]["transcription"] == {
        "model": "gpt-realtime-whisper",
        "language": "en",
    }
    assert (old["instructions"], old["audio"]["output"]) == ("Be brief.", {"voice": "marin"})
    assert after["mini"]["model"] == "gpt-realtime-2.1-mini"
    assert after["unnamed"]["model"] == "gpt-realtime-2.1"
    assert after["current"] == profiles["current"]
    assert after["dictation"]["audio"]["input"]["transcription"]["model"] == (
        "gpt-realtime-whisper"
    )
    assert "model" not in after["dictation"], "a transcription session names no model"
    assert after["diarize"] == profiles["diarize"], "no replacement: left alone, flagged"
    assert after["odd"] == profiles["odd"], "not a model name: left alone"
    by_group = {d["group"]: d for d in moves}
    assert set(by_group) == {"old", "mini", "unnamed", "dictation"}
    assert by_group["old"]["before"] == {
        "model": "gpt-realtime",
        "transcription": "gpt-4o-mini-transcribe",
    }
    assert by_group["old"]["by"] == "migration"
    logged = caplog.text
    assert "group 'old' moved" in logged
    assert "'diarize' keeps gpt-4o-transcribe-diarize" in logged


def test_console_columns_are_filled_from_the_stored_reports(empty_url: str) -> None:
    """console_1 → console_2: each device's offline_after, state and in_error come from the
    health report it last sent, as the ledger writes them with every heartbeat since."""
    engine = make_engine(empty_url)
    reports = {
        "dev_a": {"state": "idle", "heartbeat_s": 60},
        "dev_b": {"state": "error"},  # no interval: the old 300 s default
        "dev_c": {"state": "muted", "heartbeat_s": 10, "last_error": "mic gone"},
        "dev_d": {},
    }
    try:
        migrations.upgrade(engine, "console_1")
        meta = MetaData()
        groups = Table("groups", meta, autoload_with=engine)
        devices = Table("devices", meta, autoload_with=engine)
        with engine.begin() as conn:
            conn.execute(groups.insert().values(name="default", profile={}, limits={}))
            conn.execute(
                devices.insert(),
                [
                    {
                        "id": device_id,
                        "name": device_id,
                        "group": "default",
                        "public_key": f"k{device_id}",
                        "enabled": True,
                        "revoked": False,
                        "created_at": 0.0,
                        "health": health,
                    }
                    for device_id, health in reports.items()
                ],
            )
        assert migrations.upgrade(engine) == HEAD
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, offline_after, state, in_error, rotate_requested_at "
                    "FROM devices ORDER BY id"
                )
            ).all()
        assert [(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows] == [
            ("dev_a", 150.0, "idle", False, None),
            ("dev_b", 750.0, "error", True, None),
            ("dev_c", 25.0, "muted", True, None),
            ("dev_d", 750.0, None, False, None),
        ]
    finally:
        engine.dispose()

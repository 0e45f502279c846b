"""Schema migrations (Alembic). ``upgrade(engine)`` brings a database to the newest revision.

The server calls it at start-up (``Store``), ``provisioning db upgrade`` calls it by hand.
Several processes may start at once (uvicorn workers): on PostgreSQL an advisory lock and on
SQLite a lock file next to the database make them take turns; the others find the schema
current and do nothing. A database made by ``metadata.create_all`` before migrations existed
is adopted (stamped) when it matches the models exactly.

After changing the models in ``server/provisioning/store.py``, add a revision:

    alembic -c server/provisioning/alembic.ini revision --autogenerate -m "what changed"

(``tests/provisioning/test_migrations.py`` fails until the revisions match the models.)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from provisioning.errors import ProvisioningError

PG_LOCK_KEY = 0x70726F76  # "prov": pg_advisory_xact_lock key for schema upgrades
MARKER_TABLE = "devices"
"""A table every revision has: a version stamp without it means the schema was dropped."""


class SchemaMismatch(ProvisioningError, RuntimeError):
    """An unversioned database whose tables differ from the models: adopt it by hand."""


def config() -> Config:
    ini = resources.files("provisioning") / "alembic.ini"
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(Path(str(ini)).parent / "migrations"))
    return cfg


@functools.cache
def head() -> str:
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def differences(conn: Connection) -> list[Any]:
    """What autogenerate would change to make the database match the models (empty: none)."""
    from provisioning.store import Base

    context = MigrationContext.configure(
        conn,
        opts={"compare_type": True, "render_as_batch": conn.dialect.name == "sqlite"},
    )
    return list(compare_metadata(context, Base.metadata))


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the schema to ``revision``; returns the revision the database is at."""
    if revision == "head":
        with engine.connect() as conn:
            if current(conn) == head() and inspect(conn).has_table(MARKER_TABLE):
                return head()  # the common case: one cheap query, no Alembic machinery
    with _file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        cfg = config()
        cfg.attributes["connection"] = conn
        at, has_tables = current(conn), inspect(conn).has_table(MARKER_TABLE)
        if at is not None and not has_tables:
            command.stamp(cfg, "base", purge=True)  # tables dropped, stamp left behind
        elif at is None and has_tables:
            diff = differences(conn)
            if diff:
                raise SchemaMismatch(
                    f"unversioned database differs from the models ({len(diff)} changes, "
                    f"first: {diff[0]!r}); migrate it by hand, then 'alembic stamp'"
                )
            command.stamp(cfg, head())
        command.upgrade(cfg, revision)
        return current(conn) or "base"


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """Serialise upgrades of one SQLite file across processes (no-op for other databases)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

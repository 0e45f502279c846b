"""Alembic environment for the provisioning database.

Programmatic use (``provisioning.migrations.upgrade``) hands in a connection through
``config.attributes["connection"]``; the ``alembic`` command line connects to
``$PROVISIONING_DATABASE_URL`` (or ``sqlalchemy.url`` in the ini file). SQLite gets batch
mode, since it cannot ``ALTER`` most things in place.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from provisioning.store import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return os.environ.get("PROVISIONING_DATABASE_URL") or config.get_main_option(
        "sqlalchemy.url", "sqlite:///provisioning.db"
    )


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _configure(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)  # only from the alembic CLI: keep the app's logging
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _configure(conn)
    finally:
        engine.dispose()


run()

"""Migration install_enroll_1: device names become unique; duplicates are renamed, audited."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from provisioning import migrations
from provisioning.store import make_engine
from tests.provisioning.test_migrations import empty_url

__all__ = ["empty_url"]  # the fixture (SQLite and PostgreSQL)

VERSIONS = Path(migrations.__file__).parent / "versions"


def revision() -> ModuleType:
    path = next(VERSIONS.glob("r*_install_enroll_unique_device_names.py"))
    spec = importlib.util.spec_from_file_location("unique_names_revision", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_duplicates_are_numbered_oldest_first_and_empty_names_take_the_id() -> None:
    rows = [
        ("d1", "kitchen"),
        ("d2", "kitchen"),
        ("d3", "kitchen-2"),
        ("d4", ""),
        ("d5", "kitchen"),
    ]
    assert revision().unique_names(rows) == {"d2": "kitchen-3", "d4": "d4", "d5": "kitchen-4"}


def test_upgrade_renames_duplicates_and_then_refuses_them(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO groups (name, profile, limits) VALUES ('g', '{}', '{}')")
            )
            for i, name in enumerate(["hall", "hall", ""]):
                conn.execute(
                    text(
                        'INSERT INTO devices (id, name, "group", public_key, enabled, revoked,'
                        " created_at, health)"
                        " VALUES (:id, :name, 'g', :key, true, false, :at, '{}')"
                    ),
                    {"id": f"dev_{i}", "name": name, "key": f"k{i}", "at": float(i)},
                )
        migrations.upgrade(engine)
        with engine.connect() as conn:
            names = {i: n for i, n in conn.execute(text("SELECT id, name FROM devices"))}
            audit = conn.execute(
                text(
                    "SELECT device_id FROM audit WHERE action = 'device.rename' ORDER BY device_id"
                )
            ).all()
        assert names == {"dev_0": "hall", "dev_1": "hall-2", "dev_2": "dev_2"}
        assert [row[0] for row in audit] == ["dev_1", "dev_2"]
        with pytest.raises(IntegrityError), engine.begin() as conn:  # the constraint holds
            conn.execute(text("UPDATE devices SET name = 'hall' WHERE id = 'dev_2'"))
    finally:
        engine.dispose()

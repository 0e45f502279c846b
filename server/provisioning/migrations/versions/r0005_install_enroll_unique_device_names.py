"""Device names are unique (and never empty), so an operator can name a device everywhere.

Existing duplicates are renamed, not refused: the oldest device (by ``created_at``, then id)
keeps the name, each later one becomes ``name-2``, ``name-3``, … (skipping names in use); an
empty name becomes the device's id. Every rename is written to the audit log
(``device.rename``, ``{"from": old, "to": new, "why": "migration: unique names"}``) and
logged, so ``provisioning device list`` and the audit say what happened.

Revision ID: install_enroll_1
Revises: server_attacks_1
Create Date: 2026-12-05 08:00:00
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "install_enroll_1"
down_revision: str | Sequence[str] | None = "server_attacks_1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("provisioning.migrations")


def unique_names(rows: Sequence[tuple[str, str]]) -> dict[str, str]:
    """{device id: new name} for the rows (id, name), oldest first, that must be renamed."""
    taken = {name for _, name in rows if name}
    seen: set[str] = set()
    renames: dict[str, str] = {}
    for device_id, name in rows:
        if name and name not in seen:
            seen.add(name)
            continue
        base, n = name or device_id, 2
        new = base if not name else f"{base}-{n}"
        while new in taken:
            n += 1
            new = f"{base}-{n}"
        taken.add(new)
        seen.add(new)
        renames[device_id] = new
    return renames


def upgrade() -> None:
    conn = op.get_bind()
    devices = sa.table(
        "devices", sa.column("id"), sa.column("name"), sa.column("created_at", sa.Float)
    )
    audit = sa.table(
        "audit",
        sa.column("at", sa.Float),
        sa.column("action"),
        sa.column("device_id"),
        sa.column("detail", sa.JSON),
    )
    rows = conn.execute(
        sa.select(devices.c.id, devices.c.name).order_by(devices.c.created_at, devices.c.id)
    ).all()
    old = {device_id: name for device_id, name in rows}
    renames = unique_names([(device_id, name) for device_id, name in rows])
    now = time.time()
    for device_id, new in renames.items():
        conn.execute(devices.update().where(devices.c.id == device_id).values(name=new))
        detail = {"from": old[device_id], "to": new, "why": "migration: unique names"}
        conn.execute(
            audit.insert().values(
                at=now, action="device.rename", device_id=device_id, detail=detail
            )
        )
        log.warning(
            "device %s renamed %r -> %r (names are unique now)", device_id, old[device_id], new
        )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_devices_name"), ["name"])


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_devices_name"), type_="unique")

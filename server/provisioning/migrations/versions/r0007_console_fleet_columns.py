"""What the console counts the fleet by, as columns of ``devices`` (read in SQL, not decoded
from every device's health report): ``offline_after`` (seconds without a request before the
device is offline), ``state`` and ``in_error`` (from its last report), ``rotate_requested_at``
(an admin asked it to rotate its key), and an index on ``group`` (the console filters by it).

Existing devices get the columns filled from their stored report, with the same rules the
mint ledger applies to every heartbeat (written out here, not imported, so this revision
always does the same thing).

Revision ID: console_2
Revises: console_1
Create Date: 2026-12-05 11:10:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "console_2"
down_revision: str | Sequence[str] | None = "console_1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _standing(health: Any) -> dict[str, Any]:
    report = health if isinstance(health, dict) else {}
    beat = report.get("heartbeat_s")
    if not (isinstance(beat, int | float) and not isinstance(beat, bool) and beat > 0):
        beat = 300.0
    state = str(report["state"])[:32] if report.get("state") else None
    return {
        "offline_after": 2.5 * float(beat),
        "state": state,
        "in_error": state == "error" or bool(report.get("last_error")),
    }


def upgrade() -> None:
    # plain ADD COLUMNs, also on SQLite (a batch copy of a table others point at is refused)
    op.add_column(
        "devices", sa.Column("offline_after", sa.Float(), server_default="750", nullable=False)
    )
    op.add_column("devices", sa.Column("state", sa.String(length=32), nullable=True))
    op.add_column(
        "devices", sa.Column("in_error", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("devices", sa.Column("rotate_requested_at", sa.Float(), nullable=True))
    op.create_index("ix_devices_group", "devices", ["group"], unique=False)
    devices = sa.table(
        "devices",
        sa.column("id", sa.String),
        sa.column("health", sa.JSON),
        sa.column("offline_after", sa.Float),
        sa.column("state", sa.String),
        sa.column("in_error", sa.Boolean),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(devices.c.id, devices.c.health)).all()
    for device_id, health in rows:
        conn.execute(devices.update().where(devices.c.id == device_id).values(**_standing(health)))


def downgrade() -> None:
    op.drop_index("ix_devices_group", table_name="devices")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        for column in ("rotate_requested_at", "in_error", "state", "offline_after"):
            batch_op.drop_column(column)

"""Heartbeat history in time buckets (``heartbeat_buckets``) and the groups' transcript
opt-in (``groups.report_transcripts``, off: words stay on the devices).

Revision ID: console_1
Revises: install_enroll_1
Create Date: 2026-12-05 08:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "console_1"
down_revision: str | Sequence[str] | None = "install_enroll_1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INTS = (
    "beats",
    "latency_n",
    *(f"lat_h{i}" for i in range(8)),
    "reconnects",
    "wakes",
    "false_wakes",
    "self_interruptions",
    "errors",
    "erle_n",
    "session_n",
)


def upgrade() -> None:
    order = (
        "beats",
        "latency_n",
        "latency_sum",
        "latency_max",
        *(f"lat_h{i}" for i in range(8)),
        "reconnects",
        "wakes",
        "false_wakes",
        "self_interruptions",
        "errors",
        "erle_sum",
        "erle_n",
        "session_sum",
        "session_n",
    )
    op.create_table(
        "heartbeat_buckets",
        sa.Column("span", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        *(sa.Column(c, sa.Integer() if c in _INTS else sa.Float(), nullable=False) for c in order),
        sa.PrimaryKeyConstraint("span", "bucket", "device_id", name=op.f("pk_heartbeat_buckets")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("heartbeat_buckets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_heartbeat_buckets_device", ["device_id", "span", "bucket"], unique=False
        )
    # a plain ADD COLUMN, also on SQLite: a batch copy of "groups" would drop the table that
    # devices point at (refused with foreign keys on, once a device exists)
    op.add_column(
        "groups",
        sa.Column("report_transcripts", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_column("report_transcripts")
    op.drop_table("heartbeat_buckets")

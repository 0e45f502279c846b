"""Rate limits from bucketed counters instead of one row per mint; used JWT ids indexed by
expiry so they can be purged.

Counting ``mint_log`` rows on every mint cost a scan of the window (a busy group's minute is
thousands of rows). The counters hold at most 60 + 144 rows per device and 60 per group.
Mints already logged are carried over into the counters, so limits and quotas hold across
the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:40:00
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (key prefix, column of mint_log, bucket seconds, window seconds): see provisioning.ledger
_CARRY = (("d:", "device_id", 1, 60), ("q:", "device_id", 600, 86400), ("g:", "group", 1, 60))


def upgrade() -> None:
    op.create_table(
        "mint_counters",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "bucket", name=op.f("pk_mint_counters")),
    )
    with op.batch_alter_table("mint_counters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mint_counters_expires"), ["expires"], unique=False)
    with op.batch_alter_table("used_jti", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_used_jti_expires_at"), ["expires_at"], unique=False)

    conn = op.get_bind()
    log = sa.table(
        "mint_log", sa.column("device_id"), sa.column("group"), sa.column("at", sa.Float)
    )
    counters: dict[tuple[str, int], tuple[int, int]] = {}
    now = time.time()
    for device_id, group, at in conn.execute(sa.select(log.c.device_id, log.c.group, log.c.at)):
        for prefix, column, size, window in _CARRY:
            key = prefix + (device_id if column == "device_id" else group)
            bucket = int(at) // size * size
            if bucket + size + window <= now:
                continue  # out of its window already
            count, _ = counters.get((key, bucket), (0, 0))
            counters[(key, bucket)] = (count + 1, bucket + size + window)
    if counters:
        table = sa.table(
            "mint_counters",
            sa.column("key"),
            sa.column("bucket"),
            sa.column("count"),
            sa.column("expires"),
        )
        op.bulk_insert(
            table,
            [
                {"key": k, "bucket": b, "count": c, "expires": e}
                for (k, b), (c, e) in counters.items()
            ],
        )
    with op.batch_alter_table("mint_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mint_log_group"))
        batch_op.drop_index(batch_op.f("ix_mint_log_device_id"))
        batch_op.drop_index(batch_op.f("ix_mint_log_at"))
    op.drop_table("mint_log")


def downgrade() -> None:
    op.create_table(
        "mint_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("group", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mint_log")),
    )
    with op.batch_alter_table("mint_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mint_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_mint_log_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_mint_log_group"), ["group"], unique=False)
    with op.batch_alter_table("used_jti", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_used_jti_expires_at"))
    with op.batch_alter_table("mint_counters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mint_counters_expires"))
    op.drop_table("mint_counters")

"""Device public keys unique; devices remember the enrollment token they used.

Two devices can no longer share a key (the server refuses enrolling or rotating to a key in
use, and the unique index holds that under concurrent requests). ``enrolled_with`` lets a
device that retries its enrollment with the same token and key get the same device back.

A database in which two devices already share a key cannot be upgraded until one of them is
deleted (``provisioning devices``): the upgrade says which key.

Revision ID: server_attacks_1
Revises: models_1
Create Date: 2026-12-05 08:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "server_attacks_1"
down_revision: str | Sequence[str] | None = "models_1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    shared = (
        op.get_bind()
        .execute(sa.text("SELECT public_key FROM devices GROUP BY public_key HAVING COUNT(*) > 1"))
        .first()
    )
    if shared is not None:
        raise RuntimeError(f"devices share the public key {shared[0]}: delete all but one first")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enrolled_with", sa.Integer(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_devices_public_key"), ["public_key"])


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_devices_public_key"), type_="unique")
        batch_op.drop_column("enrolled_with")

"""Initial schema: groups, enrollment tokens, devices (with key-rotation columns), the mint
log behind rate limits, used JWT ids, admin keys and the audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 06:24:13.210636
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_keys",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_keys")),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_table(
        "groups",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_groups")),
    )
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

    op.create_table(
        "used_jti",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_used_jti")),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("group", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("previous_key", sa.String(length=64), nullable=True),
        sa.Column("previous_until", sa.Float(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=True),
        sa.Column("health", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["group"], ["groups.name"], name=op.f("fk_devices_group_groups")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("group", sa.String(length=64), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["group"], ["groups.name"], name=op.f("fk_enrollment_tokens_group_groups")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_enrollment_tokens_token_hash")),
    )


def downgrade() -> None:
    op.drop_table("enrollment_tokens")
    op.drop_table("devices")
    op.drop_table("used_jti")
    with op.batch_alter_table("mint_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mint_log_group"))
        batch_op.drop_index(batch_op.f("ix_mint_log_device_id"))
        batch_op.drop_index(batch_op.f("ix_mint_log_at"))

    op.drop_table("mint_log")
    op.drop_table("groups")
    op.drop_table("audit")
    op.drop_table("admin_keys")

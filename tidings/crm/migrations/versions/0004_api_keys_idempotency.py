"""web: API keys (stored hashed) and remembered Idempotency-Key responses

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_table(
        "idempotent_requests",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("api_key_id", tidings.crm.types.IdType, nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", tidings.crm.types.JSONType, nullable=False),
        sa.Column("created_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_idempotent_requests_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotent_requests")),
        sa.UniqueConstraint(
            "api_key_id", "key", name=op.f("uq_idempotent_requests_api_key_id_key")
        ),
    )
    op.create_index(
        op.f("ix_idempotent_requests_created_at"), "idempotent_requests", ["created_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotent_requests_created_at"), table_name="idempotent_requests")
    op.drop_table("idempotent_requests")
    op.drop_table("api_keys")

"""outbox: message purpose, retry time, index for frequency caps

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("purpose", sa.String(length=32), nullable=False, server_default="marketing")
        )
        batch_op.add_column(
            sa.Column(
                "next_attempt_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.create_index(
            batch_op.f("ix_messages_contact_id_created_at"), ["contact_id", "created_at"]
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.alter_column("purpose", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_contact_id_created_at"))
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("purpose")

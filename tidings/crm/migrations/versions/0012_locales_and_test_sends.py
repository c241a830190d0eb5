"""messages.locale (the template variant a message was rendered from); test_sends: test and
seed copies of journey steps, kept out of messages so reports, caps, consent and the outbox
never see them

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locale", sa.String(length=35), nullable=True))
    op.create_table(
        "test_sends",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("journey", sa.String(length=200), nullable=False),
        sa.Column("journey_id", tidings.crm.types.IdType, nullable=True),
        sa.Column("step_id", sa.String(length=200), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("template", sa.String(length=255), nullable=False),
        sa.Column("contact_id", tidings.crm.types.IdType, nullable=True),
        sa.Column("to_address", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("provider_message_id", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("detail", tidings.crm.types.JSONType, nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_test_sends_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["journey_id"],
            ["journeys.id"],
            name=op.f("fk_test_sends_journey_id_journeys"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_sends")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_test_sends_idempotency_key")),
    )
    op.create_index(op.f("ix_test_sends_contact_id"), "test_sends", ["contact_id"])
    op.create_index(op.f("ix_test_sends_status_created_at"), "test_sends", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_test_sends_status_created_at"), table_name="test_sends")
    op.drop_index(op.f("ix_test_sends_contact_id"), table_name="test_sends")
    op.drop_table("test_sends")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("locale")

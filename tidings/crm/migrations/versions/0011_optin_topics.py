"""double opt-in requests, subscription topics, and the topic of a consent change

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "topic_subscriptions",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("contact_id", tidings.crm.types.IdType, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("updated_at", tidings.crm.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_topic_subscriptions_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topic_subscriptions")),
        sa.UniqueConstraint(
            "contact_id",
            "channel",
            "topic",
            name=op.f("uq_topic_subscriptions_contact_id_channel_topic"),
        ),
    )
    op.create_table(
        "optin_requests",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("contact_id", tidings.crm.types.IdType, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", tidings.crm.types.UTCDateTime(), nullable=False),
        sa.Column("expires_at", tidings.crm.types.UTCDateTime(), nullable=False),
        sa.Column("confirmed_at", tidings.crm.types.UTCDateTime(), nullable=True),
        sa.Column("message_id", tidings.crm.types.IdType, nullable=True),
        sa.Column("detail", tidings.crm.types.JSONType, nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_optin_requests_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_optin_requests_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optin_requests")),
    )
    with op.batch_alter_table("optin_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_optin_requests_contact_id"), ["contact_id"])
    with op.batch_alter_table("consent_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("topic", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("consent_changes", schema=None) as batch_op:
        batch_op.drop_column("topic")
    with op.batch_alter_table("optin_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_optin_requests_contact_id"))
    op.drop_table("optin_requests")
    op.drop_table("topic_subscriptions")

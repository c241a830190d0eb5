"""attribute_changes: the history of contact attributes, kept by triggers (segment has_been)

Creates the table, installs the triggers of ``tidings.crm.history`` on ``contacts`` and
backfills one row per key of every existing contact, dated the contact's ``updated_at``: the
value is known to have held since then, and not known before, so ``has_been`` counts a
contact's time from there (never more than the truth).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types
from tidings.crm import history

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attribute_changes",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("contact_id", tidings.crm.types.IdType, nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", tidings.crm.types.JSONType, nullable=True),
        sa.Column("changed_at", tidings.crm.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_attribute_changes_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attribute_changes")),
    )
    op.create_index(
        op.f("ix_attribute_changes_contact_id_key_changed_at"),
        "attribute_changes",
        ["contact_id", "key", "changed_at"],
    )
    bind = op.get_bind()
    history.backfill(bind)
    history.create_triggers(bind)


def downgrade() -> None:
    history.drop_triggers(op.get_bind())
    op.drop_index(
        op.f("ix_attribute_changes_contact_id_key_changed_at"), table_name="attribute_changes"
    )
    op.drop_table("attribute_changes")

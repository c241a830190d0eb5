"""consents: drop ix_consents_contact_id, which the unique (contact_id, channel, purpose) covers

The unique index leads with ``contact_id``, so it serves every lookup by contact (and the
cascade from ``contacts``) that the single-column index served; the second index only cost a
btree insert per consent written (an import writes ~1.7 consents a contact row).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 23:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consents_contact_id"))


def downgrade() -> None:
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consents_contact_id"), ["contact_id"], unique=False)

"""segment_changes: the queue between the writes and the live segments' loop

Each write that may move a contact in or out of a live segment (an event, a contact or consent
written, an order, an ``update_contact`` step) adds a row in its own transaction; the live loop
(``tidings.segments.live.drain``) deletes the rows it evaluates in the transaction that records
the entries and exits, so a change is evaluated exactly once, whoever crashes when.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_changes",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("contact_id", tidings.crm.types.IdType, nullable=False),
        sa.Column("change", tidings.crm.types.JSONType, nullable=False),
        sa.Column("recorded_at", tidings.crm.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_changes")),
    )


def downgrade() -> None:
    op.drop_table("segment_changes")

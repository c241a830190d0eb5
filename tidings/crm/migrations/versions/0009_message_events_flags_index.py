"""message_events: index (message_id, type, machine) for per-message engagement flags

The journey report reads every event of a journey's messages grouped by message; with
``machine`` in the index PostgreSQL reads them by an index-only scan in message order and
aggregates as it goes (benchmarks/report.py: 1.5 s instead of 3.8 s for 5M events). It
replaces (message_id, type), its prefix, which serves every lookup the old one did.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_message_events_message_id_type_machine"),
            ["message_id", "type", "machine"],
            unique=False,
        )
        batch_op.drop_index(batch_op.f("ix_message_events_message_id_type"))


def downgrade() -> None:
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_message_events_message_id_type"), ["message_id", "type"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_message_events_message_id_type_machine"))

"""enrollments: (status, next_due_at) -> (status, next_due_at, id), the tick's claim order

The tick claims due enrollments with ``status = 'active' AND next_due_at <= :now ORDER BY
next_due_at, id LIMIT :batch FOR UPDATE SKIP LOCKED``. The old index did not give that order
(``id`` breaks ties between rows enrolled at the same moment, all of a broadcast's), and a
``LIMIT`` does not reach a sort below the row locks: PostgreSQL read and sorted every due row
on every tick (1M enrolled: 600k rows sorted on disk per batch of 1,000, about a second of the
server's time). With ``id`` in the index the scan comes out in the claim's order, locks rows
until it has the batch and stops. The index still serves every lookup by ``(status,
next_due_at)`` the old one served.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 01:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollments_status_next_due_at"))
        batch_op.create_index(
            batch_op.f("ix_enrollments_status_next_due_at_id"),
            ["status", "next_due_at", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollments_status_next_due_at_id"))
        batch_op.create_index(
            batch_op.f("ix_enrollments_status_next_due_at"), ["status", "next_due_at"], unique=False
        )

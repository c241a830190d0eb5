"""messages: partial indexes for the active rows and provider ids, room for HOT updates

Every message is inserted ``queued``, claimed ``in_flight``, handed over and recorded ``sent``;
each UPDATE that changes an indexed column writes a new entry into every index of the table.
Which query uses which index (checked against every query on ``messages``):

* ``(status, created_at)`` served only lookups of the *active* statuses: the dispatcher's claim
  (``status = 'queued'`` by id), reconcile and the lease heartbeat (``'in_flight'``), the
  transactional path and the broadcast shares (``'queued'``). Nothing filtered a final status
  by ``created_at`` through it (reports group whole journeys). It becomes ``(status, id)``
  over ``status IN ('queued', 'in_flight')``: the claim reads ids in order from it, and a row
  version that is ``sent``, ``failed`` or ``held`` writes no entry at all.
* ``provider_message_id`` is looked up by equality only (webhooks correlating a provider's
  id), which implies ``IS NOT NULL``: the index keeps only rows that have one, so the insert,
  the claim and the hand-over write no entry.
* ``(contact_id, created_at)`` (frequency caps, erasure), ``enrollment_id`` (goals, the
  transactional path, ``ON DELETE SET NULL``), the primary key and ``idempotency_key`` (the
  outbox's ``ON CONFLICT DO NOTHING``) stay.

On PostgreSQL the table's fillfactor becomes 80: an UPDATE that changes no indexed column
(the hand-over, the lease heartbeat) then finds room on its page and is a HOT update, which
writes no index entry at all. It applies to pages written from now on.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ACTIVE = "status IN ('queued', 'in_flight')"
HAS_ID = "provider_message_id IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_status_created_at"))
        batch_op.drop_index(batch_op.f("ix_messages_provider_message_id"))
        batch_op.create_index(
            "ix_messages_active",
            ["status", "id"],
            unique=False,
            postgresql_where=sa.text(ACTIVE),
            sqlite_where=sa.text(ACTIVE),
        )
        batch_op.create_index(
            "ix_messages_provider_message_id",
            ["provider_message_id"],
            unique=False,
            postgresql_where=sa.text(HAS_ID),
            sqlite_where=sa.text(HAS_ID),
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages RESET (fillfactor)")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_provider_message_id")
        batch_op.drop_index("ix_messages_active")
        batch_op.create_index(
            batch_op.f("ix_messages_provider_message_id"), ["provider_message_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_messages_status_created_at"), ["status", "created_at"], unique=False
        )

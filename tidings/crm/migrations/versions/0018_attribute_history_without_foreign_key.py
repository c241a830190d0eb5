"""attribute_changes: no foreign key to contacts; a trigger deletes a contact's history instead

Only the history triggers write ``attribute_changes``, from the ``contacts`` row being written,
so the foreign key's check on every history row (a lookup and a row lock on the contact) could
never fail; on PostgreSQL it was a third of inserting a contact with three attributes. The
cascade it gave (a deleted contact takes its history along) is now the trigger
``tr_contacts_attribute_history_delete`` (``tidings.crm.history``).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 01:40:00
"""

from __future__ import annotations

from alembic import op

from tidings.crm import history

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

FOREIGN_KEY = "fk_attribute_changes_contact_id_contacts"


# SQLite rebuilds the table to change a constraint, and renaming the rebuilt table fails while
# triggers name it: the triggers are dropped first and created again after.


def upgrade() -> None:
    history.drop_triggers(op.get_bind())
    with op.batch_alter_table("attribute_changes", schema=None) as batch_op:
        batch_op.drop_constraint(FOREIGN_KEY, type_="foreignkey")
    history.create_triggers(op.get_bind())  # with the delete trigger


def downgrade() -> None:
    history.drop_triggers(op.get_bind())
    with op.batch_alter_table("attribute_changes", schema=None) as batch_op:
        batch_op.create_foreign_key(
            FOREIGN_KEY, "contacts", ["contact_id"], ["id"], ondelete="CASCADE"
        )
    history.create_triggers(op.get_bind())

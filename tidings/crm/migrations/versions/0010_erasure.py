"""erasure: the erasure log, the keyed-hash suppressions of erased people, erased_at marks

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("contact_id", tidings.crm.types.IdType, nullable=True),
        sa.Column("erased_at", tidings.crm.types.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("counts", tidings.crm.types.JSONType, nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_erasures_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasures_contact_id"), ["contact_id"], unique=False)
    op.create_table(
        "erasure_suppressions",
        sa.Column("id", tidings.crm.types.IdType, autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("erasure_id", tidings.crm.types.IdType, nullable=False),
        sa.Column("created_at", tidings.crm.types.UTCDateTime(), nullable=False),
        sa.Column("released_at", tidings.crm.types.UTCDateTime(), nullable=True),
        sa.Column("released_by", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["erasure_id"],
            ["erasures.id"],
            name=op.f("fk_erasure_suppressions_erasure_id_erasures"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_suppressions")),
        sa.UniqueConstraint("digest", name=op.f("uq_erasure_suppressions_digest")),
    )
    with op.batch_alter_table("erasure_suppressions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_erasure_suppressions_erasure_id"), ["erasure_id"], unique=False
        )
    # nullable, no default: an instant catalog change on PostgreSQL, whatever the table size
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", tidings.crm.types.UTCDateTime(), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", tidings.crm.types.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("erased_at")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("erased_at")
    with op.batch_alter_table("erasure_suppressions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasure_suppressions_erasure_id"))
    op.drop_table("erasure_suppressions")
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasures_contact_id"))
    op.drop_table("erasures")

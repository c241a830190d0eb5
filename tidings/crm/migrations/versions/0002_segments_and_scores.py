"""segment memberships and contact scores

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:57:05.448765
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_memberships",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("segment", sa.String(length=200), nullable=False),
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("entered_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("exited_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_segment_memberships_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_memberships")),
    )
    with op.batch_alter_table("segment_memberships", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_segment_memberships_contact_id"), ["contact_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_segment_memberships_segment_entered_at"),
            ["segment", "entered_at"],
            unique=False,
        )
        batch_op.create_index(
            "uq_segment_memberships_open",
            ["segment", "contact_id"],
            unique=True,
            sqlite_where=sa.text("exited_at IS NULL"),
            postgresql_where=sa.text("exited_at IS NULL"),
        )

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("churn_risk", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("clv_90d", sa.Numeric(precision=14, scale=2), nullable=True))
        batch_op.add_column(sa.Column("rfm_segment", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("scores_model_version", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("scored_at", tidings.crm.types.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("scored_at")
        batch_op.drop_column("scores_model_version")
        batch_op.drop_column("rfm_segment")
        batch_op.drop_column("clv_90d")
        batch_op.drop_column("churn_risk")

    with op.batch_alter_table("segment_memberships", schema=None) as batch_op:
        batch_op.drop_index("uq_segment_memberships_open")
        batch_op.drop_index(batch_op.f("ix_segment_memberships_segment_entered_at"))
        batch_op.drop_index(batch_op.f("ix_segment_memberships_contact_id"))

    op.drop_table("segment_memberships")

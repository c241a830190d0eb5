"""conversions: the enrollment, journey version, variant and last touch that earned them

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.crm.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enrollment_id", tidings.crm.types.IdType, nullable=True))
        batch_op.add_column(sa.Column("journey_id", tidings.crm.types.IdType, nullable=True))
        batch_op.add_column(sa.Column("variant", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("message_id", tidings.crm.types.IdType, nullable=True))
        batch_op.create_index(batch_op.f("ix_conversions_enrollment_id"), ["enrollment_id"])
        batch_op.create_index(batch_op.f("ix_conversions_journey_id"), ["journey_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_conversions_enrollment_id_enrollments"),
            "enrollments",
            ["enrollment_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_conversions_journey_id_journeys"),
            "journeys",
            ["journey_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_conversions_message_id_messages"),
            "messages",
            ["message_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("conversions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_conversions_message_id_messages"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_conversions_journey_id_journeys"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_conversions_enrollment_id_enrollments"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_conversions_journey_id"))
        batch_op.drop_index(batch_op.f("ix_conversions_enrollment_id"))
        batch_op.drop_column("message_id")
        batch_op.drop_column("variant")
        batch_op.drop_column("journey_id")
        batch_op.drop_column("enrollment_id")

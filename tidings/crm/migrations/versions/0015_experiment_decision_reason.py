"""experiments.decision_reason: why the stored winner was chosen

The sentence of the decision (the test, its p-value or probability, the SRM check), and for an
auto-winner that fell back, the fallback rule applied. ``status`` says how: ``decided`` by the
experiment's rule, ``fallback`` by its auto-winner fallback.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decision_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_column("decision_reason")

"""Alembic environment: the engine comes from ``crm.db.alembic_config`` (or the settings)."""

from __future__ import annotations

from alembic import context

from tidings.crm.db import make_engine
from tidings.crm.models import Base

config = context.config
engine = config.attributes.get("engine") or make_engine()

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

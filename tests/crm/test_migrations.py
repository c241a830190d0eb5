"""The migrations produce exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from tests.conftest import PostgresServer
from tidings.crm.db import current_revision, downgrade, head_revision, make_engine, upgrade
from tidings.crm.models import Base


def _diff(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def _check_round_trip(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine)
    assert _diff(engine) == []
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert _diff(engine) == []
    engine.dispose()


def test_migrations_match_models_on_sqlite(sqlite_url: str) -> None:
    _check_round_trip(sqlite_url)


def test_migrations_match_models_on_postgresql(postgres_server: PostgresServer) -> None:
    url = postgres_server.empty_database()
    try:
        _check_round_trip(url)
    finally:
        postgres_server.drop(url)


def test_a_model_change_without_migration_is_detected(sqlite_url: str) -> None:
    """The comparison above can fail: a column the migrations lack shows up in the diff."""
    from sqlalchemy import Column, Integer, MetaData, Table

    engine = make_engine(sqlite_url)
    upgrade(engine)
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    Table("contacts", metadata, Column("shoe_size", Integer), extend_existing=True)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert [d[0] for d in diff] == ["add_column"]

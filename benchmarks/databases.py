"""Throw-away PostgreSQL databases for benchmark runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import create_engine, make_url, text

from tidings.crm.db import make_engine, upgrade

#: The server a benchmark creates its databases on, unless given ``--url``.
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string (for psycopg directly)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Database:
    """Databases ``tidings_bench_<8 hex>`` on one server: ``fresh`` makes one (migrated unless
    told otherwise), ``drop`` removes it."""

    @staticmethod
    def connect(url: str) -> psycopg.Connection[Any]:
        return psycopg.connect(libpq(url), autocommit=True)

    def __init__(self, server: str = SERVER) -> None:
        self.base = make_url(server)
        self.admin = create_engine(self.base, isolation_level="AUTOCOMMIT")

    def fresh(self, *, migrate: bool = True) -> str:
        name = f"tidings_bench_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = self.base.set(database=name).render_as_string(hide_password=False)
        if migrate:
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()
        return url

    def drop(self, url: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


@contextmanager
def scratch_database(server: str = SERVER, *, keep: bool = False) -> Iterator[str]:
    """The URL of a new, empty database on ``server``; dropped when the block ends, also on a
    failure or ^C, unless ``keep`` (to look at it afterwards)."""
    databases = Database(server)
    try:
        url = databases.fresh(migrate=False)
        try:
            yield url
        finally:
            if not keep:
                databases.drop(url)
    finally:
        databases.admin.dispose()

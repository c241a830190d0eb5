"""A throw-away PostgreSQL database for one benchmark run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url, text

#: The server a benchmark creates its database on, unless given ``--url``.
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database(server: str = SERVER, *, keep: bool = False) -> Iterator[str]:
    """The URL of a new, empty database ``tidings_bench_<8 hex>`` on ``server``; dropped when
    the block ends, also on a failure or ^C, unless ``keep`` (to look at it afterwards)."""
    name = f"tidings_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server).set(database=name).render_as_string(hide_password=False)
        finally:
            if not keep:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()

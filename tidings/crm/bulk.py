"""Set-based writes of many rows: COPY into a staging table on PostgreSQL, executemany on SQLite.

An import writes each batch with a few statements whatever its size: the rows of a table are
COPYed into a temporary staging table (one per table and column set, emptied at each commit),
then one ``INSERT .. SELECT .. ON CONFLICT`` moves them into the table. Lookups take their keys
as one array parameter (``= ANY(:keys)``), so the SQL text is the same for any batch and the
plan is an index scan whether PostgreSQL plans it for these values or generically.

``Statistics`` keeps the planner's picture of a table true while a load grows it: a table that
was empty when the load began would otherwise be planned as empty (the issue behind a 22 s
per batch cliff), and autovacuum may be off or late.

>>> with engine.begin() as conn:  # doctest: +SKIP
...     upsert(conn, orders_t, rows, key=("order_id",), update=("status", "total"))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, event, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import JSON

#: Grow a table by this factor between two ANALYZEs of a load (1.0: when it has doubled).
ANALYZE_GROWTH = 1.0
#: A table nobody analysed is analysed once a load has written this many rows into it.
ANALYZE_FIRST = 5_000


def is_postgres(bind: Connection | Engine) -> bool:
    return bind.dialect.name == "postgresql"


STAGES = "tidings_stages"  # key in a connection's info: the staging tables it has


def _forget_stages(conn: Connection, *_: Any) -> None:
    """A rollback may have undone the creation of a staging table: create them again."""
    conn.info.pop(STAGES, None)


def _stage(conn: Connection, table: Table, columns: Sequence[str]) -> str:
    """The staging table for ``columns`` of ``table`` on this connection (created once)."""
    digest = hashlib.sha1(",".join(columns).encode()).hexdigest()[:8]
    name = f"stage_{table.name}_{digest}"
    if not event.contains(conn.engine, "rollback", _forget_stages):
        event.listen(conn.engine, "rollback", _forget_stages)
        event.listen(conn.engine, "rollback_savepoint", _forget_stages)
    cache: set[str] = conn.info.setdefault(STAGES, set())
    if name not in cache:
        listed = ", ".join(f'"{c}"' for c in columns)
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ON COMMIT DELETE ROWS AS "
            f"SELECT {listed} FROM {table.name} WITH NO DATA"
        )
        cache.add(name)
    return name


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, default=str).decode()


def copy_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> str:
    """COPY ``rows`` (``columns`` of each) into the staging table of ``table``; returns its name.

    PostgreSQL only. The table is empty at the start of each transaction. Rows go through
    psycopg's ``write_row`` (formatted and escaped in C); JSON columns as orjson text."""
    name = _stage(conn, table, columns)
    getters = [
        (lambda row, c=c: _json_text(row[c])) if isinstance(table.c[c].type, JSON) else None
        for c in columns
    ]
    pairs = list(zip(columns, getters, strict=True))
    listed = ", ".join(f'"{c}"' for c in columns)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(f"COPY {name} ({listed}) FROM STDIN") as copy:
        if not any(getters):
            for row in rows:
                copy.write_row([row[c] for c in columns])
        else:
            for row in rows:
                copy.write_row([row[c] if get is None else get(row) for c, get in pairs])
    return name


def upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str] | None = None,
    update: Sequence[str] = (),
) -> int:
    """Insert ``rows`` (each with the same columns); on a conflict on ``key`` update the columns
    in ``update``, or leave the stored row as it is when ``update`` is empty. Without ``key``
    a plain insert. Returns how many rows were inserted or updated. Columns left out get
    their server default only (the models' Python defaults are not applied): give them all.

    PostgreSQL: COPY into the staging table, then one ``INSERT .. SELECT .. ON CONFLICT``.
    SQLite: one executemany (in process: no round trips to save)."""
    return len(_upsert(conn, table, rows, key, update, None)) if rows else 0


def upsert_returning(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    returning: str,
    *,
    key: Sequence[str] | None = None,
    update: Sequence[str] = (),
) -> list[Any]:
    """``upsert``, returning the column ``returning`` of each row inserted or updated."""
    return _upsert(conn, table, rows, key, update, returning) if rows else []


def _upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str] | None,
    update: Sequence[str],
    returning: str | None,
) -> list[Any]:
    """What ``upsert`` does; the returned list holds the ``returning`` values, or ``None`` per
    row written when nothing is asked for."""
    columns = list(rows[0])
    if not is_postgres(conn):
        stmt = sqlite.insert(table)
        if key is not None:
            stmt = (
                stmt.on_conflict_do_update(
                    index_elements=list(key), set_={c: stmt.excluded[c] for c in update}
                )
                if update
                else stmt.on_conflict_do_nothing(index_elements=list(key))
            )
        if returning is None:
            return [None] * int(conn.execute(stmt, list(rows)).rowcount)
        return list(conn.execute(stmt.returning(table.c[returning]), list(rows)).scalars())
    stage = copy_rows(conn, table, columns, rows)
    return move(conn, stage, table, {c: c for c in columns}, key, update, returning)


def move(
    conn: Connection,
    stage: str,
    table: Table,
    columns: Mapping[str, str],
    key: Sequence[str] | None = None,
    update: Sequence[str] = (),
    returning: str | None = None,
) -> list[Any]:
    """One ``INSERT INTO table SELECT .. FROM stage [ON CONFLICT ..]`` (PostgreSQL): ``columns``
    maps each column of ``table`` to the staging column it takes, so one staging table can
    feed several tables. Returns what ``_upsert`` does."""
    listed = ", ".join(f'"{c}"' for c in columns)
    sources = ", ".join(f'"{c}"' for c in columns.values())
    sql = f"INSERT INTO {table.name} ({listed}) SELECT {sources} FROM {stage}"
    if key is not None:
        target = ", ".join(f'"{c}"' for c in key)
        if update:
            sets = ", ".join(f'"{c}" = excluded."{c}"' for c in update)
            sql += f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
        else:
            sql += f" ON CONFLICT ({target}) DO NOTHING"
    if returning is None:
        return [None] * int(conn.exec_driver_sql(sql).rowcount)
    return list(conn.exec_driver_sql(f'{sql} RETURNING "{returning}"').scalars())


def next_ids(conn: Connection, table: Table, count: int) -> list[int]:
    """``count`` new ids from the sequence of ``table.id`` (PostgreSQL), in increasing order, so
    rows and the rows that refer to them can be written in one statement each."""
    if count == 0:
        return []
    sequences: dict[str, str] = conn.info.setdefault("tidings_sequences", {})
    if table.name not in sequences:  # looked up once, not once per id
        sequences[table.name] = conn.execute(
            text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table.name}
        ).scalar_one()
    return list(
        conn.execute(
            text("SELECT nextval(CAST(:seq AS regclass)) FROM generate_series(1, :n) ORDER BY 1"),
            {"seq": sequences[table.name], "n": count},
        ).scalars()
    )


def batch_commit(conn: Connection) -> None:
    """Let the current transaction (one batch of a load) commit without waiting for its WAL
    to reach the disk (PostgreSQL): a crash of the server can lose the last batches (well under
    a second of them), never corrupt anything, and a load is idempotent: run it again.
    ``durable`` at the end of the load makes every batch before it durable."""
    if is_postgres(conn):
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


def durable(conn: Connection) -> None:
    """Wait until every transaction committed on this server so far is on disk: a transaction
    with an id commits synchronously, which flushes the WAL up to its commit record."""
    if is_postgres(conn):
        with conn.begin():
            conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
            conn.exec_driver_sql("SELECT txid_current()")


class Statistics:
    """ANALYZE the tables a load writes whenever it has grown them by ``ANALYZE_GROWTH`` of the
    size PostgreSQL last knew (and after the first ``ANALYZE_FIRST`` rows into a table never
    analysed): a logarithmic number of ANALYZEs, each a sample of 30,000 rows or less.

    >>> stats = Statistics(engine, ["contacts", "consents"])  # doctest: +SKIP
    >>> stats.wrote({"contacts": 2000, "consents": 4000})  # doctest: +SKIP
    """

    def __init__(self, conn: Connection, tables: Sequence[str]) -> None:
        self.enabled = is_postgres(conn)
        self.known: dict[str, float] = {}
        self.written: dict[str, int] = dict.fromkeys(tables, 0)
        self.analyzed = 0
        if self.enabled:
            for name, tuples in conn.execute(
                text("SELECT relname, reltuples FROM pg_class WHERE relname = ANY(:names)"),
                {"names": list(tables)},
            ):
                self.known[name] = max(float(tuples), 0.0)

    def wrote(self, conn: Connection, counts: Mapping[str, int]) -> None:
        """Count rows written (committed or about to be); ANALYZE the tables that grew."""
        if not self.enabled:
            return
        due = []
        for name, count in counts.items():
            self.written[name] = self.written.get(name, 0) + count
            if self.written[name] >= max(ANALYZE_FIRST, ANALYZE_GROWTH * self.known.get(name, 0)):
                due.append(name)
        for name in due:
            conn.exec_driver_sql(f"ANALYZE {name}")
            self.known[name] = self.known.get(name, 0) + self.written[name]
            self.written[name] = 0
            self.analyzed += 1

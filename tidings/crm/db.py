"""Engines, sessions and migrations of the CRM store.

>>> engine = make_engine("sqlite:///:memory:")
>>> upgrade(engine)
>>> with session_scope(engine) as session:
...     session.scalar(text("select count(*) from contacts"))
0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement

from tidings.config import get_settings
from tidings.crm.types import bucket_of

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")

__all__ = [
    "current_revision",
    "head_revision",
    "insert_ignore",
    "insert_rows",
    "make_engine",
    "session_scope",
    "text",
    "update_rows",
    "upgrade",
]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy, not pysqlite, opens transactions (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # segment samples and splits: PostgreSQL computes the same bucket with md5 (sqlparts)
    dbapi_connection.create_function("tidings_bucket", 2, _sqlite_bucket, deterministic=True)


def _sqlite_bucket(identity: str | None, seed: str | None) -> int | None:
    return None if identity is None or seed is None else bucket_of(str(identity), str(seed))


def insert_ignore(bind: Connection | Session, table: Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the bind's dialect (SQLite or PostgreSQL):
    the statement every idempotent write of tidings uses.

    >>> rows = [{"channel": "email", "address": "a@example.com", "reason": "bounce",
    ...          "source": "doc"}]
    >>> with session_scope(engine) as session:  # doctest: +SKIP
    ...     session.execute(insert_ignore(session, Suppression.__table__), rows)
    """
    dialect = postgresql if _dialect(bind) == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _dialect(bind: Connection | Session) -> str:
    return bind.dialect.name if isinstance(bind, Connection) else bind.get_bind().dialect.name


SetClause = Callable[[Mapping[str, Any]], Mapping[str, Any]]
WhereClause = Callable[[Mapping[str, Any]], ColumnElement[bool]]


def update_rows(
    bind: Connection | Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: str = "id",
    set_: SetClause | None = None,
    where: WhereClause | None = None,
    returning: Sequence[ColumnElement[Any]] = (),
) -> list[Row[Any]]:
    """Update many rows, each with its own values, by ``key``; with ``returning``, those
    columns of the rows updated (PostgreSQL only).

    PostgreSQL: one statement, each column's values passed as one array parameter
    (``UPDATE .. FROM unnest(:ids, :statuses, ..) AS v``), so the SQL text is the same for any
    number of rows and is prepared once. SQLite: an executemany (in process: no round trips to
    save).

    Every row maps the same column names to values. ``set_`` builds the SET clause from the
    row's values (column name -> SQL expression) when it is more than "column = value", e.g.
    ``lambda v: {"attempts": table.c.attempts + v["attempts"], "status": v["status"]}``.
    ``where`` adds a condition built from the row's values, e.g. that the row still belongs to a
    claim: ``lambda v: table.c.claim_token == v["claim_token"]``.

    >>> update_rows(session, messages_t, [{"id": 1, "status": "sent"}])  # doctest: +SKIP
    """
    if not rows:
        return []
    names = list(rows[0])
    build = set_ or (lambda v: {name: v[name] for name in names if name != key})
    if _dialect(bind) != "postgresql":
        if returning:
            raise ValueError("update_rows(returning=...) is for PostgreSQL only")
        params = {n: bindparam(f"u_{n}", type_=table.c[n].type) for n in names}
        condition = table.c[key] == params[key]
        bind.execute(
            update(table)
            .where(condition if where is None else and_(condition, where(params)))
            .values(build(params)),
            [{f"u_{n}": row[n] for n in names} for row in rows],
        )
        return []
    columns = _unnest(table, rows, names)
    condition = table.c[key] == columns[key]
    statement = (
        update(table)
        .where(condition if where is None else and_(condition, where(columns)))
        .values(build(columns))
    )
    if not returning:
        bind.execute(statement)
        return []
    return list(bind.execute(statement.returning(*returning)).all())


def insert_rows(
    bind: Connection | Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    returning: Sequence[ColumnElement[Any]] = (),
) -> list[Row[Any]]:
    """``insert_ignore`` many rows (each with the same column names): one statement with one
    array parameter per column on PostgreSQL, an executemany on SQLite. With ``returning``:
    those columns of the rows actually inserted (not of those a conflict skipped)."""
    if not rows:
        return []
    if _dialect(bind) != "postgresql":
        statement = insert_ignore(bind, table)
        if not returning:
            bind.execute(statement, list(rows))
            return []
        return list(bind.execute(statement.returning(*returning), list(rows)).all())
    names = list(rows[0])
    columns = _unnest(table, rows, names)
    statement = (
        postgresql.insert(table)
        .from_select(names, select(*columns.values()))
        .on_conflict_do_nothing()
    )
    if not returning:
        bind.execute(statement)
        return []
    return list(bind.execute(statement.returning(*returning)).all())


def among(
    bind: Connection | Session | Engine,
    col: ColumnElement[Any] | QueryableAttribute[Any],
    values: Iterable[Any],
) -> ColumnElement[bool]:
    """``col IN values`` for a batch of hundreds or thousands of values.

    PostgreSQL: ``col = ANY(ARRAY(SELECT jsonb_array_elements_text(:values)))``, one parameter
    and a short SQL text that psycopg parses once (an IN list of 1,000 placeholders cost ~25 ms
    of client time per statement to build and split, every time); an index on ``col`` is still
    used. SQLite: a plain IN.

    >>> session.scalars(select(Message.id).where(among(session, Message.id, ids)))  # doctest: +SKIP
    """
    given = list(values)
    name = bind.dialect.name if isinstance(bind, Connection | Engine) else _dialect(bind)
    if name != "postgresql":
        return col.in_(given)
    document = orjson.dumps(given, default=_json_default).decode()
    elements = func.jsonb_array_elements_text(
        cast(bindparam(None, document, type_=Text()), JSONB())
    )
    return col == any_(
        func.array(select(cast(elements.column_valued(), col.type)).scalar_subquery())
    )


def _unnest(
    table: Table, rows: Sequence[Mapping[str, Any]], names: list[str]
) -> dict[str, ColumnElement[Any]]:
    """PostgreSQL ``jsonb_to_recordset(:rows) AS v(a type, b type, ..)``: the rows as one JSON
    document (orjson, in C) that the server turns back into typed columns. Per column arrays
    (``unnest(:a, :b, ..)``) cost psycopg ~4 us per value to dump in Python: for the 17
    columns of 1,000 outbox rows, 5-10x what this costs client and server together."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    plain: list[tuple[str, Callable[[Any], Any] | None]] = []
    for n in names:
        kind = table.c[n].type
        # JSON columns nest as they are; the others go through their bind processing (e.g.
        # UTCDateTime refuses naive times) before orjson writes them
        nested = isinstance(kind.dialect_impl(dialect), sqltypes.JSON)
        plain.append((n, None if nested else kind._cached_bind_processor(dialect)))
    document = orjson.dumps(
        [
            {n: (v if (v := row[n]) is None or proc is None else proc(v)) for n, proc in plain}
            for row in rows
        ],
        default=_json_default,
    ).decode()
    given = (
        func.jsonb_to_recordset(cast(bindparam("u_rows", document, type_=Text()), JSONB()))
        .table_valued(*(column(n, table.c[n].type) for n in names), name="v")
        .render_derived(with_types=True)
    )
    return {n: given.c[n] for n in names}


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # numeric columns read the exact digits back
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a column value")


def _sqlite_begin(connection: Any) -> None:
    """Take the write lock when a transaction starts: SQLite cannot upgrade a read
    transaction to a write one while another connection writes ("database is locked" without
    waiting), so concurrent workers queue on ``busy_timeout`` instead."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` (default: ``TIDINGS_DATABASE_URL``), tuned per dialect."""
    url = url or get_settings().database_url
    if url.startswith("sqlite"):
        if ":memory:" in url or url in {"sqlite://", "sqlite:///"}:
            kwargs.setdefault("poolclass", StaticPool)
            kwargs.setdefault("connect_args", {"check_same_thread": False})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back on error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


# alembic is imported where migrations are run or read: it takes ~0.4 s to import, and a
# command that only reads or writes the store (an import, a send) has no use for it.
def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the store to ``revision`` (default: the newest)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()

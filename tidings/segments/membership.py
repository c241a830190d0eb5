"""Materialised segment membership, refreshed set-based (the difference computed in SQL).

``refresh`` runs two statements, each a set operation inside the database:

* ``UPDATE segment_memberships SET exited_at = :now`` for open stays whose contact is no longer
  in the segment's statement;
* ``INSERT INTO segment_memberships ... SELECT`` the segment's contacts without an open stay
  (``ON CONFLICT DO NOTHING`` on the partial unique index, so two refreshes racing cannot
  open a stay twice).

A refresh of an unchanged segment therefore writes nothing (both rowcounts are 0), and a
journey triggered by "enters segment" reads each entry once: rows with ``entered_at`` after
its last look. A contact who leaves and comes back gets a new row.

>>> with session_scope(engine) as session:              # doctest: +SKIP
...     entered, exited = refresh("vip", session=session, catalog=catalog)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    and_,
    any_,
    bindparam,
    exists,
    func,
    literal,
    null,
    select,
    text,
    update,
)
from sqlalchemy import insert as sql_insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.config import get_settings
from tidings.crm.types import utcnow
from tidings.segments.compile import compile_core, contacts, memberships
from tidings.segments.loader import Catalog
from tidings.segments.rules import Segment
from tidings.segments.sqlparts import Unmoving, moving_params

_MEMORY = re.compile(r"[1-9][0-9]*(kB|MB|GB)")


def tune_for_segments(session: Session, work_mem: str | None = None) -> None:
    """On PostgreSQL, ``SET LOCAL`` for the rest of the session's transaction: ``work_mem``
    (default: the ``segment_work_mem`` setting; empty: the server's value) and ``jit = off``.

    work_mem: a segment's statement may sort or hash many rows (an event most contacts have);
    with the server default of 4MB such a step spills to disk. JIT: the planner prices the
    per-contact subqueries high, so PostgreSQL JIT-compiles with inlining and optimisation,
    which took 0.5 s of a 0.9 s evaluation of 50,000 contacts (60 ms without) and 0.3-0.5 s at
    1,000,000 (benchmarks/README.md); these plans are index probes, which JIT does not speed up.
    ``SET LOCAL`` ends with the transaction: other work on the connection keeps the server's.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    if work_mem is None:
        work_mem = get_settings().segment_work_mem
    if work_mem:
        if not _MEMORY.fullmatch(work_mem):
            raise ValueError(f"work_mem must look like 64MB, 512kB or 1GB, not {work_mem!r}")
        session.execute(text(f"SET LOCAL work_mem = '{work_mem}'"))
    session.execute(text("SET LOCAL jit = off"))


def segment_statement(
    segment: str | Segment, *, catalog: Catalog | None, dialect: str, now: datetime
) -> Select[tuple[int]]:
    """The one statement selecting the segment's contact ids at ``now``."""
    catalog = catalog or Catalog()
    return compile_core(catalog.core(segment), dialect=dialect, now=now)


def _name(segment: str | Segment) -> str:
    return segment if isinstance(segment, str) else segment.name


def evaluate(
    segment: str | Segment,
    *,
    session: Session,
    catalog: Catalog | None = None,
    now: datetime | None = None,
) -> list[int]:
    """The ids of the segment's contacts, in id order (one SQL statement)."""
    stmt = segment_statement(
        segment, catalog=catalog, dialect=session.get_bind().dialect.name, now=now or utcnow()
    )
    tune_for_segments(session)
    return list(session.scalars(stmt.order_by(stmt.selected_columns[0])))


def count(
    segment: str | Segment,
    *,
    session: Session,
    catalog: Catalog | None = None,
    now: datetime | None = None,
) -> int:
    stmt = segment_statement(
        segment, catalog=catalog, dialect=session.get_bind().dialect.name, now=now or utcnow()
    )
    tune_for_segments(session)
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(b"tidings-segment:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_segments(session: Session, names: Sequence[str]) -> None:
    """``lock_segment`` for each name, in the given order, in one round trip (PostgreSQL)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    if len(names) == 1:
        lock_segment(session, names[0])
        return
    session.execute(
        text(
            "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT k FROM"
            " unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS t(k, n) ORDER BY n) AS ordered"
        ),
        {"keys": [_lock_key(name) for name in names]},
    )


def lock_segment(session: Session, name: str) -> None:
    """Serialise changes to one segment's stays until the transaction ends (PostgreSQL: an
    advisory transaction lock; SQLite serialises writers itself). Every writer of stays takes
    it first, so each one's statements see every change committed before it got the lock: the
    live path and the full refresh, from any number of workers, neither lose nor repeat an
    entry or exit."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(name)})


@dataclass
class Stays:
    """What one refresh changed: new stays (membership id, contact id) and exited contacts
    (listed only when the refresh was restricted to some contacts; else counted)."""

    entered: int = 0
    exited: int = 0
    new: list[tuple[int, int]] = field(default_factory=list)
    left: list[int] = field(default_factory=list)


def refresh(
    segment: str | Segment,
    *,
    session: Session,
    catalog: Catalog | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Bring ``segment_memberships`` up to date; returns (entered, exited) row counts."""
    stays = refresh_stays(segment, session=session, catalog=catalog, now=now)
    return stays.entered, stays.exited


def refresh_stays(
    segment: str | Segment,
    *,
    session: Session,
    catalog: Catalog | None = None,
    now: datetime | None = None,
    contact_ids: Collection[int] | None = None,
    locked: bool = False,
) -> Stays:
    """``refresh``, optionally restricted to ``contact_ids`` (the live path: the segment's
    statement evaluated for those contacts only, still set-based); takes the segment's lock
    (``locked``: the caller took it already, ``lock_segments``). On PostgreSQL with
    ``contact_ids``, a segment named in ``catalog`` runs its statement from ``prepare``,
    built once, not per call."""
    now = now or utcnow()
    name = _name(segment)
    dialect = session.get_bind().dialect.name
    some = sorted(set(contact_ids)) if contact_ids is not None else None
    if some is not None:
        if not locked:
            lock_segment(session, name)
        if dialect == "postgresql":
            prepared = None
            if isinstance(segment, str) and catalog is not None:
                prepared = prepare(segment, catalog=catalog)
            if prepared is None:  # a rule with a time as a value, or a segment not in a catalog
                built = segment_statement(segment, catalog=catalog, dialect=dialect, now=now)
                prepared = Prepared(_some_pg(name, built), {})
            return _refresh_some_pg(session, prepared, some, now)
        statement = segment_statement(segment, catalog=catalog, dialect=dialect, now=now)
        return _refresh_some(session, name, statement.where(contacts.c.id.in_(some)), some, now)
    statement = segment_statement(segment, catalog=catalog, dialect=dialect, now=now)
    members = statement.subquery()
    m = memberships
    lock_segment(session, name)
    tune_for_segments(session)
    connection = session.connection()  # Core execution: exact rowcounts on both dialects
    stays = Stays()
    leave = (
        update(m)
        .where(
            m.c.segment == name,
            m.c.exited_at.is_(None),
            # NOT EXISTS, not NOT IN: an anti-join at any size (PostgreSQL runs NOT IN as a
            # hashed subplan only while the members fit in work_mem, else row by row)
            ~exists(select(literal(1)).where(members.c.id == m.c.contact_id)),
        )
        .values(exited_at=now)
    )
    stays.exited = int(connection.execute(leave).rowcount)
    is_open = exists(
        select(literal(1)).where(
            and_(m.c.segment == name, m.c.contact_id == members.c.id, m.c.exited_at.is_(None))
        )
    )
    new = select(literal(name), members.c.id, literal(now, m.c.entered_at.type)).where(~is_open)
    columns = ["segment", "contact_id", "entered_at"]
    insert: Any = postgresql.insert(m) if dialect == "postgresql" else sqlite.insert(m)
    enter = insert.from_select(columns, new).on_conflict_do_nothing(
        index_elements=["segment", "contact_id"], index_where=m.c.exited_at.is_(None)
    )
    result = connection.execute(enter.execution_options(preserve_rowcount=True))
    stays.entered = int(result.rowcount)
    return stays


def _refresh_some(
    session: Session, name: str, statement: Select[tuple[int]], some: list[int], now: datetime
) -> Stays:
    """The live path's refresh of a few contacts (``some``, up to about 1,000): the segment's
    statement runs once for them, their open stays are read by the unique index, and the
    differences are written by id (an UPDATE of the exits, one INSERT of the entries). Under
    the segment's lock no other writer changes these stays meanwhile; the unique index stays
    the backstop. A few contacts need neither more work_mem nor the guard against JIT."""
    m = memberships
    connection = session.connection()
    inside = set(connection.execute(statement).scalars())
    open_now = set(
        connection.execute(
            select(m.c.contact_id).where(
                m.c.segment == name, m.c.exited_at.is_(None), m.c.contact_id.in_(some)
            )
        ).scalars()
    )
    stays = Stays()
    leaving = sorted(open_now - inside)
    if leaving:
        connection.execute(
            update(m)
            .where(m.c.segment == name, m.c.exited_at.is_(None), m.c.contact_id.in_(leaving))
            .values(exited_at=now)
        )
        stays.left, stays.exited = leaving, len(leaving)
    entering = sorted(inside - open_now)
    if entering:
        rows = connection.execute(
            sql_insert(m).returning(m.c.id, m.c.contact_id, sort_by_parameter_order=True),
            [{"segment": name, "contact_id": cid, "entered_at": now} for cid in entering],
        )
        stays.new = [(int(i), int(cid)) for i, cid in rows]
        stays.entered = len(stays.new)
    return stays


@dataclass(frozen=True)
class Prepared:
    """A segment's live statement on PostgreSQL (``_some_pg``), built once for any contacts
    and any ``now`` (``prepare``): the batch's values travel as parameters, so a batch builds
    no statement and SQLAlchemy neither walks it for a cache key nor compiles it again."""

    statement: Any
    moving: dict[str, float]
    """The statement's time parameters (``sqlparts.moving_params``)."""


_prepared: dict[tuple[str, str], Prepared | None] = {}


def prepare(name: str, *, catalog: Catalog) -> Prepared | None:
    """The segment's ``Prepared`` statement for its current rule: built on first use and kept
    per (name, rule): a segment registered again with another rule gets a new one. None: the
    rule compares with a time as a value (``sqlparts.Unmoving``), built per batch instead."""
    core = catalog.core(name)
    key = (name, repr(core))
    if key in _prepared:
        return _prepared[key]
    moving: dict[str, float] = {}
    found: Prepared | None
    try:
        statement = compile_core(core, dialect="postgresql", now=utcnow(), moving=moving)
    except Unmoving:
        found = None
    else:
        found = Prepared(_some_pg(name, statement), moving)
    if len(_prepared) > 1024:
        _prepared.clear()
    _prepared[key] = found
    return found


def _some_pg(name: str, statement: Select[tuple[int]]) -> Any:
    """The statement of ``_refresh_some_pg``; parameters ``ids`` (the contacts) and
    ``stay_at`` (the time of the entries and exits)."""
    m = memberships
    ids = bindparam("ids", type_=postgresql.ARRAY(BigInteger), required=True)
    at = bindparam("stay_at", type_=m.c.entered_at.type, required=True)
    inside = statement.where(contacts.c.id == any_(ids)).cte("inside")
    mine = and_(m.c.segment == name, m.c.exited_at.is_(None), m.c.contact_id == any_(ids))
    open_now = select(m.c.contact_id).where(mine).cte("open_now")
    leave = (
        update(m)
        .where(mine, m.c.contact_id.not_in(select(inside.c.id)))
        .values(exited_at=at)
        .returning(m.c.contact_id)
        .cte("leave")
    )
    new = select(literal(name), inside.c.id, at).where(
        inside.c.id.not_in(select(open_now.c.contact_id))
    )
    # the Core insert: the dialect's (ON CONFLICT) has no cache key, it would compile every time
    enter = (
        sql_insert(m)
        .from_select(["segment", "contact_id", "entered_at"], new)
        .returning(m.c.id, m.c.contact_id)
        .cte("enter")
    )
    return select(enter.c.id, enter.c.contact_id).union_all(
        select(null().cast(Integer), leave.c.contact_id)
    )


def _refresh_some_pg(
    session: Session,
    prepared: Prepared,
    some: list[int],
    now: datetime,
) -> Stays:
    """``_refresh_some`` on PostgreSQL in one statement and one round trip, for any number of
    contacts: their ids travel as one array parameter (``= ANY(:ids)``: the SQL text, and so
    psycopg's parse and the server's prepared plan, is the same for every batch), the
    segment's statement runs once for them (a CTE), and the exits (``UPDATE``) and entries
    (``INSERT .. SELECT``) are written by data-modifying CTEs that return what they wrote.
    Both see the statement's one snapshot and touch different rows: an exit closes an open
    stay of a contact not inside, an entry opens one for a contact inside without one.
    ``prepared``: the statement, and the values its time parameters take at ``now``."""
    params = {"ids": some, "stay_at": now, **moving_params(prepared.moving, now)}
    stays = Stays()
    for stay, cid in session.connection().execute(prepared.statement, params):
        if stay is None:
            stays.left.append(int(cid))
        else:
            stays.new.append((int(stay), int(cid)))
    stays.new.sort(key=lambda row: row[1])
    stays.left.sort()
    stays.entered, stays.exited = len(stays.new), len(stays.left)
    return stays


def current_members(segment: str, *, session: Session) -> list[int]:
    """Contact ids with an open stay in ``segment`` (from the materialised table)."""
    m = memberships
    stmt = select(m.c.contact_id).where(m.c.segment == segment, m.c.exited_at.is_(None))
    return list(session.scalars(stmt.order_by(m.c.contact_id)))

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

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from crm.types import utcnow
from segments.compile import compile_core, memberships
from segments.loader import Catalog
from segments.rules import Segment


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
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


def refresh(
    segment: str | Segment,
    *,
    session: Session,
    catalog: Catalog | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Bring ``segment_memberships`` up to date; returns (entered, exited) row counts."""
    now = now or utcnow()
    name = _name(segment)
    dialect = session.get_bind().dialect.name
    members = segment_statement(segment, catalog=catalog, dialect=dialect, now=now).subquery()
    m = memberships
    connection = session.connection()  # Core execution: exact rowcounts on both dialects
    exited = connection.execute(
        update(m)
        .where(
            m.c.segment == name,
            m.c.exited_at.is_(None),
            m.c.contact_id.not_in(select(members.c.id)),
        )
        .values(exited_at=now)
    ).rowcount
    is_open = exists(
        select(literal(1)).where(
            and_(m.c.segment == name, m.c.contact_id == members.c.id, m.c.exited_at.is_(None))
        )
    )
    new = select(literal(name), members.c.id, literal(now, m.c.entered_at.type)).where(~is_open)
    insert: Any = postgresql.insert(m) if dialect == "postgresql" else sqlite.insert(m)
    statement = insert.from_select(["segment", "contact_id", "entered_at"], new)
    statement = statement.on_conflict_do_nothing(
        index_elements=["segment", "contact_id"], index_where=m.c.exited_at.is_(None)
    )
    entered = connection.execute(statement.execution_options(preserve_rowcount=True)).rowcount
    return int(entered), int(exited)


def current_members(segment: str, *, session: Session) -> list[int]:
    """Contact ids with an open stay in ``segment`` (from the materialised table)."""
    m = memberships
    stmt = select(m.c.contact_id).where(m.c.segment == segment, m.c.exited_at.is_(None))
    return list(session.scalars(stmt.order_by(m.c.contact_id)))

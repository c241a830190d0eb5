"""Materialised membership: enter, exit, re-enter; an unchanged segment writes nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, event, select, update

from tests.segments.crm_fixture import NOW, build_crm
from tidings.crm.db import session_scope
from tidings.crm.models import Contact, SegmentMembership
from tidings.segments.loader import Catalog, parse_segment
from tidings.segments.membership import count, current_members, evaluate, refresh

PRO = parse_segment({"name": "pro", "rule": {"attribute": "plan", "eq": "pro"}})


def set_plan(engine: Engine, contact_id: int, plan: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(Contact).where(Contact.id == contact_id).values(attributes={"plan": plan})
        )


def stays(engine: Engine, contact_id: int) -> list[tuple[Any, ...]]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(SegmentMembership.entered_at, SegmentMembership.exited_at)
            .where(SegmentMembership.contact_id == contact_id)
            .order_by(SegmentMembership.id)
        ).all()
    return [tuple(r) for r in rows]


def test_enter_exit_reenter_and_unchanged_writes_nothing(store: Engine) -> None:
    ids = build_crm(store)
    pro = {ids[e] for e in ("c01", "c03", "c08", "c11")}
    t1, t2, t3, t4 = (NOW + timedelta(hours=h) for h in range(4))

    with session_scope(store) as session:
        assert refresh(PRO, session=session, now=t1) == (4, 0)
    with session_scope(store) as session:
        assert set(current_members("pro", session=session)) == pro

    writes: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "BEGIN", "SET LOCAL")):
            writes.append(statement)

    event.listen(store, "after_cursor_execute", record)
    try:
        with session_scope(store) as session:
            assert refresh(PRO, session=session, now=t2) == (0, 0)
    finally:
        event.remove(store, "after_cursor_execute", record)
    assert len(writes) == 2  # one UPDATE, one INSERT ... SELECT, each touching 0 rows

    set_plan(store, ids["c01"], "free")
    set_plan(store, ids["c02"], "pro")
    with session_scope(store) as session:
        assert refresh(PRO, session=session, now=t3) == (1, 1)
    with session_scope(store) as session:
        members = set(current_members("pro", session=session))
    assert members == (pro - {ids["c01"]}) | {ids["c02"]}
    assert stays(store, ids["c01"]) == [(t1, t3)]

    set_plan(store, ids["c01"], "pro")
    with session_scope(store) as session:
        assert refresh(PRO, session=session, now=t4) == (1, 0)
    assert stays(store, ids["c01"]) == [(t1, t3), (t4, None)]  # a re-entry is a new row

    with session_scope(store) as session:
        entries_since_t3 = session.scalars(
            select(SegmentMembership.contact_id).where(
                SegmentMembership.segment == "pro", SegmentMembership.entered_at > t3
            )
        ).all()
    assert entries_since_t3 == [ids["c01"]]


def test_materialised_reference_and_count(store: Engine) -> None:
    ids = build_crm(store)
    catalog = Catalog(segments={"pro": PRO})
    uses_table = parse_segment(
        {
            "name": "pro_buyers",
            "rule": {
                "all": [
                    {"segment": {"name": "pro", "materialised": True}},
                    {"orders": {}},
                ]
            },
        }
    )
    with session_scope(store) as session:
        assert evaluate(uses_table, session=session, catalog=catalog, now=NOW) == []
        refresh("pro", session=session, catalog=catalog, now=NOW)
    with session_scope(store) as session:
        found = evaluate(uses_table, session=session, catalog=catalog, now=NOW)
        assert set(found) == {ids["c01"], ids["c08"], ids["c11"]}
        assert count("pro", session=session, catalog=catalog, now=NOW) == 4

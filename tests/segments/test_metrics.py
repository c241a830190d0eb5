"""Counts and order metrics against a reference computed in Python from the fixture rows.

The compiler reads one contact's events and orders through correlated subqueries (EXISTS with
OFFSET for counts, per-contact sum/avg/max/min): every operator, threshold and window here must
give what the plain definition gives, on SQLite and PostgreSQL, and ``not`` must give exactly
the other contacts (no NULL slips through). Plus: the work_mem a segment transaction gets, and
the indexes those subqueries read.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import pytest
from sqlalchemy import Engine, event, text

from tests.segments.crm_fixture import CONTACTS, EVENTS, NOW, ORDERS, ago, build_crm
from tidings.config import get_settings
from tidings.crm.db import make_engine, session_scope, upgrade
from tidings.segments import core as c
from tidings.segments.compile import compile_core
from tidings.segments.loader import parse_segment
from tidings.segments.membership import count, tune_for_segments
from tidings.segments.rules import Ago

OPS: tuple[c.CountOp, ...] = ("eq", "gt", "gte", "lt", "lte")
DAY = 86400.0


def _holds(left: Any, op: str, right: Any) -> bool:
    if left is None:
        return False
    return bool(
        {
            "eq": left == right,
            "gt": left > right,
            "gte": left >= right,
            "lt": left < right,
            "lte": left <= right,
        }[op]
    )


def _orders(ext: str, node: c.OrderMetric) -> list[tuple[Decimal, datetime]]:
    rows = []
    for who, total, status, days in ORDERS:
        placed = ago(days)
        if who != ext or placed > NOW:
            continue
        if node.statuses is None and status in c.EXCLUDED_ORDER_STATUSES:
            continue
        if node.statuses is not None and status not in node.statuses:
            continue
        if node.since is not None and placed < NOW - timedelta(seconds=node.since):
            continue
        rows.append((Decimal(total), placed))
    return rows


def order_reference(ext: str, node: c.OrderMetric) -> bool:
    rows = _orders(ext, node)
    totals, times = [t for t, _ in rows], [p for _, p in rows]
    metric: Any = {
        "count": len(rows),
        "total_spend": sum(totals, Decimal(0)),
        "average_value": sum(totals, Decimal(0)) / len(totals) if totals else None,
        "last_order": max(times, default=None),
        "first_order": min(times, default=None),
    }[node.metric]
    value = node.value
    if isinstance(value, Ago):
        value = NOW - timedelta(seconds=value.seconds)
    return _holds(metric, node.op, value)


def event_reference(ext: str, node: c.EventCount) -> bool:
    n = 0
    for who, name, _, days in EVENTS:
        at = ago(days)
        recent = node.since is None or at >= NOW - timedelta(seconds=node.since)
        if who == ext and name == node.name and at <= NOW and recent:
            n += 1
    return _holds(n, node.op, node.n)


def cases() -> Iterator[tuple[c.Core, set[str]]]:
    """Each node with the contacts the plain definition puts in it."""
    nodes: list[c.EventCount | c.OrderMetric] = []
    for op in OPS:
        for n in (0, 1, 2, 3, 5):
            for since in (None, 30 * DAY):
                nodes.append(c.EventCount("product.viewed", (), since, op, n))
            for statuses in (None, ("paid",)):
                for since in (None, 60 * DAY):
                    nodes.append(c.OrderMetric("count", op, n, since, statuses))
        for spend in (0, 50, 100, 250):
            nodes.append(c.OrderMetric("total_spend", op, spend, None, None))
        for average in (20, 60, 100.0):
            nodes.append(c.OrderMetric("average_value", op, average, None, None))
        moments: list[Any] = [Ago(seconds=30 * DAY), Ago(seconds=120 * DAY), ago(10), ago(120)]
        metrics: tuple[Literal["last_order", "first_order"], ...] = ("last_order", "first_order")
        for metric in metrics:
            for moment in moments:
                nodes.append(c.OrderMetric(metric, op, moment, None, None))
    for node in nodes:
        if isinstance(node, c.EventCount):
            expected = {ext for ext in CONTACTS if event_reference(ext, node)}
        else:
            expected = {ext for ext in CONTACTS if order_reference(ext, node)}
        yield node, expected


def test_counts_and_metrics_match_their_definition(store: Engine) -> None:
    ids = build_crm(store)
    names = {v: k for k, v in ids.items()}
    dialect = store.dialect.name
    wrong = []
    checked = 0
    with session_scope(store) as session:
        for node, expected in cases():
            for rule, want in ((node, expected), (c.Not(node), set(CONTACTS) - expected)):
                stmt = compile_core(rule, dialect=dialect, now=NOW)
                got = {names[i] for i in session.scalars(stmt.subquery().select())}
                checked += 1
                if got != want:
                    wrong.append((rule, sorted(got), sorted(want)))
    assert checked > 300
    assert not wrong, wrong[:5]


def test_the_reference_is_not_trivial() -> None:
    """Each kind of node has cases that split the contacts (some in, some out)."""
    splits: dict[str, int] = {}
    for node, expected in cases():
        kind = node.metric if isinstance(node, c.OrderMetric) else "events"
        splits[kind] = splits.get(kind, 0) + (0 < len(expected) < len(CONTACTS))
    assert len(splits) == 6
    assert min(splits.values()) >= 5, splits


PRO = parse_segment({"name": "pro", "rule": {"attribute": "plan", "eq": "pro"}})


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def _show(session: Any) -> tuple[str, str]:
    return session.scalar(text("SHOW work_mem")), session.scalar(text("SHOW jit"))


def test_segment_settings_last_one_transaction(pg: Engine) -> None:
    with session_scope(pg) as session:
        work_mem, jit = _show(session)
    assert jit == "on"  # the server default, which a segment transaction turns off
    configured = get_settings().segment_work_mem
    with session_scope(pg) as session:
        count(PRO, session=session, now=NOW)
        assert _show(session) == (configured or work_mem, "off")
        tune_for_segments(session, "96MB")
        assert _show(session) == ("96MB", "off")
    with session_scope(pg) as session:  # the same pooled connection, a new transaction
        assert _show(session) == (work_mem, jit)
        with pytest.raises(ValueError, match="64MB"):
            tune_for_segments(session, "64MB'; DROP TABLE contacts; --")


def test_sqlite_has_no_work_mem(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with session_scope(engine) as session:
        tune_for_segments(session, "64MB")
    engine.dispose()
    assert not [s for s in statements if "SET" in s]


def test_the_indexes_segment_subqueries_read(pg: Engine) -> None:
    with pg.connect() as conn:
        defs: dict[str, str] = {
            name: definition
            for name, definition in conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN (:e, :o)"),
                {"e": "events", "o": "orders"},
            )
        }
    assert "(contact_id, name, occurred_at)" in defs["ix_events_contact_id_name_occurred_at"]
    assert "(name, occurred_at, contact_id)" in defs["ix_events_name_occurred_at_contact_id"]
    orders_index = defs["ix_orders_contact_id_placed_at"]
    assert "(contact_id, placed_at) INCLUDE (total, status)" in orders_index

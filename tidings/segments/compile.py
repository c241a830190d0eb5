"""Core segment nodes -> ONE SQLAlchemy Core ``select(contacts.c.id)`` statement.

One compile function per core node kind; never a Python loop over rows. A contact's events
and orders are read by subqueries correlated on ``contact_id``: EXISTS for "has any", EXISTS
with OFFSET for "at least n" (the scan stops at the n-th row), per-contact sum / avg / max / min
for RFM metrics, so only contacts that pass the rule's cheaper conditions are looked at.
SQLite and PostgreSQL give identical results: JSON values are compared only with values of
their own JSON type (a string ``"5"`` never equals the number ``5``), dates in JSON are ISO 8601
strings read as UTC unless they carry an offset, and ``now`` is a parameter.

>>> from datetime import UTC, datetime
>>> from tidings.segments.core import Column, Compare
>>> stmt = compile_core(Compare(Column("locale"), "eq", "de"), dialect="sqlite",
...                     now=datetime(2026, 1, 1, tzinfo=UTC))
>>> print(stmt)  # doctest: +NORMALIZE_WHITESPACE
SELECT contacts.id FROM contacts
WHERE contacts.erased_at IS NULL AND contacts.locale IS NOT NULL
    AND contacts.locale = :locale_1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, assert_never

from sqlalchemy import (
    Select,
    and_,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from tidings.analytics.engagement import human_click, human_open
from tidings.crm.models import (
    AttributeChange,
    Base,
    Consent,
    Contact,
    Event,
    Journey,
    Message,
    MessageEvent,
    Order,
    SegmentMembership,
    Suppression,
    TopicSubscription,
)
from tidings.crm.types import utcnow
from tidings.segments import core as c
from tidings.segments.rules import COLUMN_KINDS, Ago
from tidings.segments.sqlparts import (
    Ctx,
    Expr,
    JsonPath,
    compare_op,
    name_matches,
    stable_bucket,
    text_contains,
    value_kind,
)

_tables = Base.metadata.tables
contacts = _tables[Contact.__tablename__]
events = _tables[Event.__tablename__]
orders = _tables[Order.__tablename__]
messages = _tables[Message.__tablename__]
message_events = _tables[MessageEvent.__tablename__]
journeys = _tables[Journey.__tablename__]
consents = _tables[Consent.__tablename__]
topic_subscriptions = _tables[TopicSubscription.__tablename__]
suppressions = _tables[Suppression.__tablename__]
memberships = _tables[SegmentMembership.__tablename__]
attribute_changes = _tables[AttributeChange.__tablename__]

RECEIVED_STATUSES = ("sent", "delivered")


def compile_core(
    node: c.Core,
    *,
    dialect: str,
    now: datetime | None = None,
    moving: dict[str, float] | None = None,
) -> Select[tuple[int]]:
    """The statement selecting the ids of every contact in the segment.

    ``moving``: an empty dict to build a statement for any ``now``: the times it compares
    with become bound parameters, named in the dict (``sqlparts.moving_params`` gives their
    values at a given now). A rule that compares with a time as a value (``older_than`` on
    an attribute, ``last_order``) raises ``sqlparts.Unmoving``."""
    now = now or utcnow()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ctx = Ctx(dialect, now.astimezone(UTC), {"attributes": contacts.c.attributes}, moving)
    where, _ = predicate(node, ctx)
    # an erased contact (an anonymous row kept for the counts) is in no segment
    return select(contacts.c.id).where(contacts.c.erased_at.is_(None), where)


def predicate(node: c.Core, ctx: Ctx) -> tuple[Expr, bool]:
    """A SQL condition for ``node`` and whether it may be NULL (matters only under NOT)."""
    match node:
        case c.All(children):
            return _junction(children, ctx, and_, true())
        case c.AnyOf(children):
            return _junction(children, ctx, or_, false())
        case c.Not(child):
            inner, nullable = predicate(child, ctx)
            return not_(func.coalesce(inner, false()) if nullable else inner), False
        case c.Const(value):
            return (true() if value else false()), False
        case c.Compare():
            return compare(node, ctx), node.op != "exists"
        case c.EventCount():
            return event_count(node, ctx), False
        case c.LastEvent():
            return last_event(node, ctx), False
        case c.HasBeen():
            return has_been(node, ctx), False
        case c.OrderMetric():
            return order_metric(node, ctx), False
        case c.Engaged():
            return engaged(node, ctx), False
        case c.ConsentGranted():
            return consent_granted(node), False
        case c.TopicChosen():
            return topic_chosen(node), False
        case c.Suppressed():
            return suppressed(node), False
        case c.Member():
            return member(node), False
        case c.Bucket():
            return bucket(node, ctx), False
        case _:
            assert_never(node)


def _junction(children: tuple[c.Core, ...], ctx: Ctx, join: Any, empty: Expr) -> tuple[Expr, bool]:
    if not children:
        return empty, False
    parts = [predicate(child, ctx) for child in children]
    if len(parts) == 1:
        return parts[0]
    return join(*(p for p, _ in parts)), any(n for _, n in parts)


# -- attributes and properties ---------------------------------------------------------------


def compare(node: c.Compare, ctx: Ctx) -> Expr:
    if isinstance(node.target, c.Column):
        return _column_compare(node, node.target.name, ctx)
    return _json_compare(node, ctx.json_columns[node.target.column], node.target.path, ctx)


def _column_compare(node: c.Compare, name: str, ctx: Ctx) -> Expr:
    column = contacts.c[name]
    kind = {"text": "text", "number": "number", "time": "time"}[COLUMN_KINDS[name]]
    if node.op == "exists":
        present = column.is_not(None)
        return and_(present, column != "") if kind == "text" else present
    values = node.value if isinstance(node.value, tuple) else (node.value,)
    for value in values:
        if value_kind(value) != kind:
            raise ValueError(f"{name} holds {kind}, so compare it with {kind}, not {value!r}")
    guard = column.is_not(None)
    match node.op:
        case "in":
            return and_(guard, column.in_([_plain(v, ctx) for v in values]))
        case "contains":
            return and_(guard, text_contains(column, str(node.value), ctx))
        case "starts_with":
            prefix = str(node.value)
            return and_(guard, func.substr(column, 1, len(prefix)) == prefix)
        case _:
            return and_(guard, compare_op(column, node.op, _plain(node.value, ctx)))


def _plain(value: object, ctx: Ctx) -> Any:
    return ctx.at(value) if isinstance(value, datetime | Ago) else value


def _json_compare(node: c.Compare, column: Any, path: tuple[str, ...], ctx: Ctx) -> Expr:
    doc = JsonPath(column, path, ctx)
    match node.op:
        case "exists":
            return doc.present()
        case "in":
            assert isinstance(node.value, tuple)
            return or_(*(doc.compare("eq", v) for v in node.value)) if node.value else false()
        case "contains":
            value = node.value
            assert isinstance(value, str | int | float | Decimal)
            array = doc.array_contains(value)
            if isinstance(value, str):
                return or_(text_contains(doc.string(), value, ctx), array)
            return array
        case "starts_with":
            prefix = str(node.value)
            return func.substr(doc.string(), 1, len(prefix)) == prefix
        case _:
            return doc.compare(node.op, node.value)


# -- events and orders -----------------------------------------------------------------------
#
# Everything about one contact's events or orders is a correlated subquery on
# ``contact_id = contacts.id`` (served by the (contact_id, ...) indexes), so the database
# looks only at the rows of contacts that pass the rule's other conditions, instead of
# grouping every event or order by contact first. Plain EXISTS / NOT EXISTS are kept wherever
# the meaning allows: PostgreSQL turns them into semi- and anti-joins and picks per query
# between probing the index per contact and hashing the matching rows (a rare event).


#: A fresh ``SELECT 1 FROM <alias> WHERE contact_id = contacts.id AND ...`` for each use, so
#: every subquery has its own alias (readable ``explain`` output, no accidental correlation).
Rows = Callable[[], Select[Any]]


def _nth_row(rows: Rows, n: int) -> Expr:
    """The contact has at least ``n`` rows: the n-th exists (the scan stops there)."""
    if n <= 0:
        return true()
    if n == 1:
        return exists(rows())
    return exists(rows().offset(n - 1))


def count_compare(rows: Rows, op: str, n: int) -> Expr:
    """``count(rows) op n`` without reading more than n + 1 rows of a contact."""
    match op:
        case "gte":
            return _nth_row(rows, n)
        case "gt":
            return _nth_row(rows, n + 1)
        case "lt":
            return not_(_nth_row(rows, n))
        case "lte":
            return not_(_nth_row(rows, n + 1))
        case "eq":
            return and_(_nth_row(rows, n), not_(_nth_row(rows, n + 1))) if n >= 0 else false()
        case _:
            raise AssertionError(op)


def _event_rows(e: Any, name: str, ctx: Ctx) -> list[Expr]:
    """A contact's events named ``name`` (or matching the pattern) up to now."""
    return [
        e.c.contact_id == contacts.c.id,
        name_matches(e.c.name, name, ctx),
        e.c.occurred_at <= ctx.until,
    ]


def _where(node_where: tuple[c.Core, ...], e: Any, ctx: Ctx) -> list[Expr]:
    inner = replace(ctx, json_columns={**ctx.json_columns, "properties": e.c.properties})
    return [predicate(f, inner)[0] for f in node_where]


def event_count(node: c.EventCount, ctx: Ctx) -> Expr:
    def rows() -> Select[Any]:
        e = events.alias()
        conds = _event_rows(e, node.name, ctx)
        if node.since is not None:
            conds.append(e.c.occurred_at >= ctx.since(node.since))
        return select(literal(1)).where(*conds, *_where(node.where, e, ctx))

    return count_compare(rows, node.op, node.n)


def last_event(node: c.LastEvent, ctx: Ctx) -> Expr:
    """The latest event (by time, then by id: the one recorded last) passes the filters.

    ``EXISTS (a matching event e with no later event of the name)``: on the index
    (contact_id, name, occurred_at) PostgreSQL probes each candidate's successors."""
    e, later = events.alias(), events.alias()
    conds = _event_rows(e, node.name, ctx)
    if node.since is not None:
        conds.append(e.c.occurred_at >= ctx.since(node.since))
    newer = exists(
        select(literal(1)).where(
            later.c.contact_id == e.c.contact_id,
            name_matches(later.c.name, node.name, ctx),
            later.c.occurred_at <= ctx.until,
            or_(
                later.c.occurred_at > e.c.occurred_at,
                and_(later.c.occurred_at == e.c.occurred_at, later.c.id > e.c.id),
            ),
        )
    )
    return exists(select(literal(1)).where(*conds, *_where(node.where, e, ctx), ~newer))


def has_been(node: c.HasBeen, ctx: Ctx) -> Expr:
    """``held`` was true at every moment of ``[now - seconds, now]``, by the attribute history.

    The history of key K is a sequence of values, each from its ``changed_at`` on. The values
    in force during the window are the last one set at or before its start (none: K was
    missing then) and every one set inside it; each must pass ``held``. The contact must also
    have existed at the start of the window.
    """
    start = ctx.since(node.seconds)
    h, before, earlier = (attribute_changes.alias() for _ in range(3))

    def of_key(t: Any) -> list[Expr]:
        return [t.c.contact_id == contacts.c.id, t.c.key == node.key]

    if ctx.dialect == "sqlite":
        doc: Expr = func.json_object(node.key, func.json(h.c.value))
        missing: Expr = literal("{}")
    else:
        doc = func.jsonb_build_object(node.key, h.c.value)
        missing = cast(literal("{}"), JSONB)
    superseded = exists(
        select(literal(1)).where(
            before.c.contact_id == h.c.contact_id,
            before.c.key == h.c.key,
            before.c.changed_at <= start,
            or_(
                before.c.changed_at > h.c.changed_at,
                and_(before.c.changed_at == h.c.changed_at, before.c.id > h.c.id),
            ),
        )
    )
    in_force = or_(h.c.changed_at > start, ~superseded)
    failed, _ = predicate(c.Not(node.held), replace(ctx, json_columns={"attributes": doc}))
    broken = exists(
        select(literal(1)).where(*of_key(h), h.c.changed_at <= ctx.until, in_force, failed)
    )
    set_before = exists(select(literal(1)).where(*of_key(earlier), earlier.c.changed_at <= start))
    held_missing, nullable = predicate(
        node.held, replace(ctx, json_columns={"attributes": missing})
    )
    if nullable:
        held_missing = func.coalesce(held_missing, false())
    return and_(contacts.c.created_at <= start, or_(set_before, held_missing), ~broken)


def _order_rows(o: Any, node: c.OrderMetric, ctx: Ctx) -> list[Expr]:
    conds: list[Expr] = [o.c.contact_id == contacts.c.id, o.c.placed_at <= ctx.until]
    if node.statuses is not None:
        conds.append(o.c.status.in_(node.statuses))
    else:
        conds.append(o.c.status.not_in(c.EXCLUDED_ORDER_STATUSES))
    if node.since is not None:
        conds.append(o.c.placed_at >= ctx.since(node.since))
    return conds


def _orders_of(node: c.OrderMetric, ctx: Ctx) -> Select[Any]:
    o = orders.alias()
    return select(literal(1)).where(*_order_rows(o, node, ctx))


def order_metric(node: c.OrderMetric, ctx: Ctx) -> Expr:
    value = node.value
    o = orders.alias()
    agg: Expr
    right: Any = value
    match node.metric:
        case "count":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"an order count is a whole number, not {value!r}")
            return count_compare(lambda: _orders_of(node, ctx), node.op, value)
        case "total_spend" | "average_value":
            if value_kind(value) != "number":
                raise ValueError(f"{node.metric} is an amount, not {value!r}")
            agg = func.sum(o.c.total) if node.metric == "total_spend" else func.avg(o.c.total)
        case "last_order" | "first_order":
            if not isinstance(value, datetime | Ago):
                raise ValueError(f"{node.metric} is a date: use within, older_than, gte ...")
            column = o.c.placed_at
            # max/min over an index on (contact_id, placed_at): one index entry per contact
            agg = func.max(column) if node.metric == "last_order" else func.min(column)
            right = literal(ctx.at(value), column.type)
        case _:
            assert_never(node.metric)
    per_contact: Expr = select(agg).where(*_order_rows(o, node, ctx)).scalar_subquery()
    if node.metric == "total_spend":  # a contact without orders has spent 0
        return compare_op(func.coalesce(per_contact, 0), node.op, right)
    # no orders: no average, no first or last order, so not a member (and never NULL)
    return func.coalesce(compare_op(per_contact, node.op, right), false())


# -- messages, consent, membership, samples ----------------------------------------------------


def engaged(node: c.Engaged, ctx: Ctx) -> Expr:
    m = messages.alias()
    conds: list[Expr] = [m.c.contact_id == contacts.c.id]
    if node.journey is not None:
        conds.append(
            m.c.journey_id.in_(select(journeys.c.id).where(journeys.c.name == node.journey))
        )
    if node.step is not None:
        conds.append(m.c.step_id == node.step)
    if node.template is not None:
        conds.append(m.c.template == node.template)
    if node.channel is not None:
        conds.append(m.c.channel == node.channel)
    if node.kind == "received":
        conds.append(m.c.status.in_(RECEIVED_STATUSES))
        if node.since is not None:
            conds += [m.c.sent_at >= ctx.since(node.since), m.c.sent_at <= ctx.until]
        return exists(select(literal(1)).select_from(m).where(*conds))
    ev = message_events.alias()
    # the one rule of the reports (analytics.engagement): machine opens and clicks never count
    match node.kind:
        case "opened":
            conds.append(human_open(ev))
        case "clicked":
            conds.append(human_click(ev))
        case "bounced":
            conds.append(ev.c.type == "bounce")
    conds.append(ev.c.occurred_at <= ctx.until)
    if node.since is not None:
        conds.append(ev.c.occurred_at >= ctx.since(node.since))
    joined = m.join(ev, ev.c.message_id == m.c.id)
    return exists(select(literal(1)).select_from(joined).where(*conds))


def consent_granted(node: c.ConsentGranted) -> Expr:
    return exists(
        select(literal(1)).where(
            consents.c.contact_id == contacts.c.id,
            consents.c.channel == node.channel,
            consents.c.purpose == node.purpose,
            consents.c.status == "granted",
        )
    )


def topic_chosen(node: c.TopicChosen) -> Expr:
    def choice(status: str) -> Expr:
        return exists(
            select(literal(1)).where(
                topic_subscriptions.c.contact_id == contacts.c.id,
                topic_subscriptions.c.channel == node.channel,
                topic_subscriptions.c.topic == node.topic,
                topic_subscriptions.c.status == status,
            )
        )

    # opt-out topic: in unless they left it; opt-in topic: in only if they chose it
    return not_(choice("revoked")) if node.default else choice("granted")


def suppressed(node: c.Suppressed) -> Expr:
    address = contacts.c[c.ADDRESS_COLUMN[node.channel]]
    return exists(
        select(literal(1)).where(
            suppressions.c.channel == node.channel,
            suppressions.c.address.in_([address, func.lower(address)]),
        )
    )


def member(node: c.Member) -> Expr:
    return exists(
        select(literal(1)).where(
            memberships.c.segment == node.segment,
            memberships.c.contact_id == contacts.c.id,
            memberships.c.exited_at.is_(None),
        )
    )


def bucket(node: c.Bucket, ctx: Ctx) -> Expr:
    """The contact's stable bucket (:func:`sqlparts.stable_bucket`) is in [low, high)."""
    if node.low <= 0 and node.high >= 10000:
        return true()
    value = stable_bucket(contacts.c.external_id, contacts.c.email, contacts.c.id, node.seed, ctx)
    if node.low <= 0:
        return value < node.high
    return and_(value >= node.low, value < node.high)

"""Recompute ``attributions`` for the conversions of a period, from the store's touches.

:func:`run_attribution` reads the conversions whose ``occurred_at`` falls in
``[since, until)``, and for their contacts every touch that could count (any journey):

* ``send``: a message the provider accepted, at ``COALESCE(sent_at, created_at)``;
* ``open``: the message's **first** human open (:mod:`tidings.analytics.engagement`: machine
  opens never count, pixel and provider opens are one);
* ``click``: every human click (``machine = false``).

Each conversion is attributed by :func:`tidings.analytics.attribute_all` (windows per touch
kind, time-decay half-life, position shares: :class:`AttributionSettings`), and the
``attributions`` rows of those conversions and models are deleted and written again, in the
caller's transaction: run it inside ``engine.begin()`` and a failure leaves the old rows. Nothing
is sent; running it twice writes the same rows. Weights of a conversion sum to 1 and its money
to its value, to the cent (the core guarantees both).

>>> with engine.begin() as conn:                                    # doctest: +SKIP
...     run = run_attribution(conn, since=datetime(2026, 11, 1, tzinfo=UTC))
>>> run.conversions, run.rows                                      # doctest: +SKIP
(42, 310)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, delete, func, insert, select

from tidings.analytics.attribution import (
    DEFAULT_SETTINGS,
    MODELS,
    AttributionSettings,
    Model,
    Touch,
    attribute_all,
)
from tidings.analytics.attribution import Conversion as ConversionIn
from tidings.analytics.engagement import human_click, human_open, is_sent, message_events, messages
from tidings.analytics.report import attributions_t, conversions_t, journeys_t
from tidings.crm.models import Order
from tidings.crm.types import utcnow

DEFAULT_CURRENCY = "USD"
"""The currency of a conversion that names none (an event goal without ``currency``): it only
sets the unit money is split in (cents). The future setting is
``TIDINGS_DEFAULT_CURRENCY``; until then ``--currency`` on the command line overrides it."""

orders_t = Order.__table__


@dataclass
class JourneyTotal:
    journey: str  # "-" for messages outside any journey
    model: str
    conversions: int
    value: Decimal


@dataclass
class AttributionRun:
    since: datetime | None
    until: datetime
    models: tuple[Model, ...]
    conversions: int = 0
    value: Decimal = Decimal(0)
    rows: int = 0
    deleted: int = 0
    unattributed: dict[str, int] = field(default_factory=dict)
    totals: list[JourneyTotal] = field(default_factory=list)


def _period(column: Any, since: datetime | None, until: datetime) -> ColumnElement[bool]:
    cond: ColumnElement[bool] = column < until
    return and_(column >= since, cond) if since is not None else cond


def run_attribution(
    conn: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    models: Sequence[Model] = MODELS,
    settings: AttributionSettings = DEFAULT_SETTINGS,
    currency: str = DEFAULT_CURRENCY,
) -> AttributionRun:
    """Delete and recompute the attributions of the conversions in ``[since, until)``."""
    until = until or utcnow()
    run = AttributionRun(since=since, until=until, models=tuple(models))
    c = conversions_t
    in_period = _period(c.c.occurred_at, since, until)
    conversions = conn.execute(
        select(
            c.c.id,
            c.c.contact_id,
            c.c.occurred_at,
            c.c.value,
            func.coalesce(c.c.currency, orders_t.c.currency),
        )
        .select_from(c.outerjoin(orders_t, orders_t.c.id == c.c.order_id))
        .where(in_period)
        .order_by(c.c.id)
    ).all()
    touches = _touches(conn, in_period, since, until, settings)
    rows: list[dict[str, Any]] = []
    unattributed: dict[str, int] = defaultdict(int)
    for cid, contact, at, value, cur in conversions:
        amount = Decimal(str(value or 0))
        run.conversions += 1
        run.value += amount
        conversion = ConversionIn(at=at, value=amount, currency=str(cur or currency))
        results = attribute_all(
            conversion, touches.get(contact, ()), models=models, settings=settings
        )
        for model, result in results.items():
            if result.unattributed:
                unattributed[model] += 1
            rows.extend(
                {
                    "conversion_id": cid,
                    "message_id": credit.message_id,
                    "model": model,
                    "weight": float(credit.weight),
                    "value": credit.value,
                }
                for credit in result.credits
            )
    done = conn.execute(
        delete(attributions_t).where(
            attributions_t.c.model.in_(list(models)),
            attributions_t.c.conversion_id.in_(select(c.c.id).where(in_period)),
        )
    )
    run.deleted = int(getattr(done, "rowcount", 0) or 0)
    for start in range(0, len(rows), 5000):
        conn.execute(insert(attributions_t), rows[start : start + 5000])
    run.rows = len(rows)
    run.unattributed = {m: unattributed.get(m, 0) for m in models}
    run.totals = _totals(conn, in_period, models)
    return run


def _touches(
    conn: Connection,
    in_period: ColumnElement[bool],
    since: datetime | None,
    until: datetime,
    settings: AttributionSettings,
) -> dict[int, list[Touch]]:
    """Every touch of the converting contacts that may fall inside a window of the period."""
    m, ev = messages, message_events
    contacts = select(conversions_t.c.contact_id).where(in_period)
    widest = max(settings.send_window, settings.open_window, settings.click_window)
    lower = since - widest if since is not None else None
    at = func.coalesce(m.c.sent_at, m.c.created_at)
    found: dict[int, list[Touch]] = defaultdict(list)
    sends = select(m.c.contact_id, m.c.id, at).where(
        m.c.contact_id.in_(contacts), is_sent(m), _period(at, lower, until)
    )
    for contact, mid, when in conn.execute(sends):
        found[contact].append(Touch("send", when, int(mid)))
    first_open = func.min(ev.c.occurred_at)
    opens = (
        select(m.c.contact_id, m.c.id, first_open)
        .select_from(m.join(ev, ev.c.message_id == m.c.id))
        .where(m.c.contact_id.in_(contacts), human_open(ev), ev.c.occurred_at < until)
        .group_by(m.c.contact_id, m.c.id)
    )
    if lower is not None:
        opens = opens.having(first_open >= lower)
    for contact, mid, when in conn.execute(opens):
        found[contact].append(Touch("open", when, int(mid)))
    clicks = (
        select(m.c.contact_id, m.c.id, ev.c.occurred_at)
        .select_from(m.join(ev, ev.c.message_id == m.c.id))
        .where(
            m.c.contact_id.in_(contacts), human_click(ev), _period(ev.c.occurred_at, lower, until)
        )
    )
    for contact, mid, when in conn.execute(clicks):
        found[contact].append(Touch("click", when, int(mid)))
    return found


def _totals(
    conn: Connection, in_period: ColumnElement[bool], models: Sequence[Model]
) -> list[JourneyTotal]:
    at, m, j = attributions_t, messages, journeys_t
    query = (
        select(
            j.c.name,
            at.c.model,
            func.count(func.distinct(at.c.conversion_id)),
            func.sum(at.c.value),
        )
        .select_from(at.join(m, m.c.id == at.c.message_id).outerjoin(j, j.c.id == m.c.journey_id))
        .where(
            at.c.model.in_(list(models)),
            at.c.conversion_id.in_(select(conversions_t.c.id).where(in_period)),
        )
        .group_by(j.c.name, at.c.model)
        .order_by(j.c.name, at.c.model)
    )
    return [
        JourneyTotal(str(name or "-"), str(model), int(n), Decimal(str(v or 0)))
        for name, model, n, v in conn.execute(query)
    ]

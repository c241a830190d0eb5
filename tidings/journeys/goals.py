"""Goals and conversions: every goal event within the window after a contact's entry converts
that enrollment once, whether the contact is still waiting, finished or exited.

>>> with Session(db) as session, session.begin():          # doctest: +SKIP
...     convert(session, engine.versions("welcome"), now=utcnow())
(3, 2)

A conversion records the enrollment (and its journey version), the variant the contact was
assigned in the journey (an experiment's variant, ``holdout``, or ``control`` for the journey's
control group), the last message sent to it before the conversion (the last touch), and for an
order its id and value. ``goal.exit`` ends an enrollment that is still active when it converts.

It runs set-based for a whole journey at each tick (enrollments whose window is open, or closed
less than ``LATE`` ago, for goal events that arrive late) and for one contact as soon as an
event for a goal is posted, so a conversion is never waiting for a step to fall due.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Table, and_, exists, select, update
from sqlalchemy.orm import Session

from tidings.crm.db import insert_rows
from tidings.crm.models import (
    Assignment,
    Conversion,
    Enrollment,
    Event,
    Experiment,
    Message,
    MessageStatus,
    Order,
)
from tidings.journeys.experiments import CONTROL, in_control
from tidings.journeys.state import Version, matches

conversions_t: Table = Conversion.__table__  # type: ignore[assignment]
LATE = timedelta(days=7)  # a goal event may arrive (an import, a buffer) this long after


def convert(
    session: Session, versions: Iterable[Version], *, now: datetime, contact_id: int | None = None
) -> tuple[int, int]:
    """Record the conversions of ``versions`` (of one journey or several) up to ``now``, and
    end the active enrollments whose goal says ``exit``; returns (converted, exited)."""
    converted = exited = 0
    for version in versions:
        goal = version.journey.settings.goal
        if goal is None:
            continue
        rows = _conversions(session, version, now=now, contact_id=contact_id)
        if not rows:
            continue
        insert_rows(session, conversions_t, rows)
        converted += len(rows)
        if goal.exit:
            ended = session.execute(
                update(Enrollment)
                .where(
                    Enrollment.id.in_([r["enrollment_id"] for r in rows]),
                    Enrollment.status == "active",
                )
                .values(
                    status="exited",
                    exit_reason="goal",
                    exited_at=now,
                    next_due_at=None,
                    updated_at=now,
                )
            )
            exited += int(getattr(ended, "rowcount", 0))
    return converted, exited


def _conversions(
    session: Session, version: Version, *, now: datetime, contact_id: int | None
) -> list[dict[str, Any]]:
    goal = version.journey.settings.goal
    assert goal is not None
    window = timedelta(seconds=goal.within)
    query = (
        select(
            Enrollment.id,
            Enrollment.contact_id,
            Enrollment.entered_at,
            Event.id,
            Event.occurred_at,
            Event.properties,
        )
        .join(
            Event,
            and_(
                Event.contact_id == Enrollment.contact_id,
                Event.name == goal.event,
                Event.occurred_at >= Enrollment.entered_at,
                Event.occurred_at <= now,
            ),
        )
        .where(
            Enrollment.journey_id == version.id,
            Enrollment.entered_at >= now - window - LATE,
            ~exists().where(Conversion.enrollment_id == Enrollment.id),
        )
        .order_by(Enrollment.id, Event.occurred_at, Event.id)
    )
    if contact_id is not None:
        query = query.where(Enrollment.contact_id == contact_id)
    first: dict[int, Any] = {}
    for row in session.execute(query):
        enrollment_id, _, entered_at, _, occurred_at, properties = row
        if enrollment_id in first or occurred_at > entered_at + window:
            continue
        if matches(properties, goal.where):
            first[enrollment_id] = row
    if not first:
        return []
    touches = _last_touches(session, first)
    variants = _variants(session, version, {row[1] for row in first.values()})
    orders = _orders(session, first.values())
    rows = []
    for enrollment_id, (_, contact, _, event_id, occurred_at, properties) in first.items():
        props = properties or {}
        order = orders.get(str(props.get("order_id")))
        rows.append(
            {
                "idempotency_key": f"goal:{enrollment_id}",
                "contact_id": contact,
                "kind": "order" if order is not None else "event",
                "goal": f"{version.name}:{goal.event}",
                "order_id": order,
                "event_id": event_id,
                "occurred_at": occurred_at,
                "value": _money(props.get("value", props.get("total"))),
                "currency": str(props["currency"])[:3] if props.get("currency") else None,
                "enrollment_id": enrollment_id,
                "journey_id": version.id,
                "variant": variants.get(contact),
                "message_id": touches.get(enrollment_id),
            }
        )
    return rows


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value)).quantize(Decimal("0.01")) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def _last_touches(session: Session, first: dict[int, Any]) -> dict[int, int]:
    """The last message sent by each enrollment before its conversion."""
    found: dict[int, int] = {}
    rows = session.execute(
        select(Message.enrollment_id, Message.id, Message.created_at)
        .where(
            Message.enrollment_id.in_(list(first)),
            Message.status == MessageStatus.SENT.value,
        )
        .order_by(Message.id)
    )
    for enrollment_id, message_id, created_at in rows:
        if created_at <= first[enrollment_id][4]:
            found[enrollment_id] = message_id
    return found


def _variants(session: Session, version: Version, contacts: set[int]) -> dict[int, str]:
    """The journey's control group first; else the contact's variant in the journey's first
    experiment (``holdout`` included)."""
    percent = version.journey.settings.control_group
    variants: dict[int, str] = {}
    assigned: dict[int, list[tuple[int, str]]] = defaultdict(list)
    rows = session.execute(
        select(Assignment.contact_id, Experiment.id, Assignment.variant)
        .join(Experiment, Experiment.id == Assignment.experiment_id)
        .where(Experiment.journey_name == version.name, Assignment.contact_id.in_(contacts))
    )
    for contact, experiment_id, variant in rows:
        assigned[contact].append((experiment_id, variant))
    for contact in contacts:
        if percent and in_control(version.name, contact, percent):
            variants[contact] = CONTROL
        elif assigned[contact]:
            variants[contact] = min(assigned[contact])[1]
    return variants


def _orders(session: Session, rows: Iterable[Any]) -> dict[str, int]:
    refs = {str((row[5] or {}).get("order_id")) for row in rows if (row[5] or {}).get("order_id")}
    if not refs:
        return {}
    return {
        ref: oid
        for ref, oid in session.execute(
            select(Order.order_id, Order.id).where(Order.order_id.in_(refs))
        )
    }

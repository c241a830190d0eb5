"""What starts journeys: posted events (with the transactional fast path) and schedules.

``post_event`` is the one entry for an event, whoever posts it (CLI, API, import of a live
feed): it stores the event once (idempotency key), enrols the contact in every active journey
the event triggers, wakes enrollments waiting for it, and for a *transactional* journey runs
the new enrollments and sends their messages at once, in the same call: an order-status SMS
does not wait for the next tick.

>>> outcome = post_event(runtime, contact_id=7, name="order.shipped",
...                      properties={"order": {"number": "1"}})  # doctest: +SKIP
>>> outcome.sent                                                  # doctest: +SKIP
1
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim
from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from tidings.crm.db import insert_ignore
from tidings.crm.models import Event, Message
from tidings.crm.models import Journey as JourneyRow
from tidings.crm.types import utcnow
from tidings.journeys import schema as s
from tidings.journeys.engine import Version, wake_waiting
from tidings.journeys.runtime import Runtime
from tidings.journeys.state import matches

SCHEDULE_LOOKBACK = timedelta(days=35)
events_t: Table = Event.__table__  # type: ignore[assignment]


@dataclass
class EventOutcome:
    event_id: int | None
    duplicate: bool
    enrollments: dict[str, list[int]] = field(default_factory=dict)
    woken: int = 0
    sent: int = 0
    failed: int = 0


def event_key(contact_id: int, name: str, occurred_at: datetime, properties: Any) -> str:
    body = json.dumps(
        [contact_id, name, occurred_at.isoformat(), properties], sort_keys=True, default=str
    )
    return "evt:" + hashlib.sha256(body.encode()).hexdigest()[:32]


def newest_active(versions: list[Version]) -> list[Version]:
    """The newest version of every active journey (new entries go there), from ``versions``
    ordered oldest first."""
    newest = {version.name: version for version in versions}
    return [version for version in newest.values() if version.status == "active"]


def post_event(
    runtime: Runtime,
    *,
    contact_id: int,
    name: str,
    properties: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    idempotency_key: str | None = None,
    source: str = "api",
    now: datetime | None = None,
) -> EventOutcome:
    now = now or utcnow()
    occurred_at = occurred_at or now
    properties = properties or {}
    key = idempotency_key or event_key(contact_id, name, occurred_at, properties)
    with Session(runtime.db) as session, session.begin():
        stored = session.execute(
            insert_ignore(session, events_t)
            .values(
                contact_id=contact_id,
                name=name,
                properties=properties,
                occurred_at=occurred_at,
                received_at=now,
                source=source,
                idempotency_key=key,
            )
            .returning(Event.id)
        ).scalar()
    if stored is None:  # seen before: a retried POST must not enrol or send again
        return EventOutcome(event_id=None, duplicate=True)
    outcome = EventOutcome(event_id=stored, duplicate=False)
    trigger = {
        "name": name,
        "properties": properties,
        "occurred_at": occurred_at.isoformat(),
        "event_id": stored,
    }
    every = runtime.engine.versions()  # one query for all journeys and their versions
    active = newest_active(every)
    urgent: list[tuple[Version, list[int]]] = []
    for version in active:
        t = version.journey.trigger
        if isinstance(t, s.EventTrigger) and t.event == name and matches(properties, t.where):
            ids = runtime.engine.enroll_contacts(
                version,
                [contact_id],
                entry_key=f"event:{key}",
                context={"trigger": trigger},
                now=now,
            )
            outcome.enrollments[version.name] = ids
            if ids and version.journey.settings.transactional:
                urgent.append((version, ids))
    active_names = {version.name for version in active}
    with Session(runtime.db) as session, session.begin():
        outcome.woken = wake_waiting(
            session,
            contact_id=contact_id,
            event=name,
            versions=[v for v in every if v.name in active_names],
            now=now,
        )
    for version, ids in urgent:
        of_journey = {v.id: v for v in every if v.name == version.name}
        runtime.engine.tick_batch(of_journey, now=now, batch_size=len(ids), only=ids)
        with Session(runtime.db) as session:
            message_ids = list(
                session.scalars(
                    select(Message.id).where(
                        Message.enrollment_id.in_(ids), Message.status == "queued"
                    )
                )
            )
        stats = runtime.dispatcher.dispatch(now=now, only=message_ids)
        outcome.sent += stats.sent
        outcome.failed += stats.failed
    return outcome


def latest_occurrence(
    cron: str, timezone: str, *, now: datetime, not_before: datetime
) -> datetime | None:
    """The last time ``cron`` fired at or before ``now`` (and not before ``not_before``)."""
    zone = ZoneInfo(timezone)
    start = max(not_before, now - SCHEDULE_LOOKBACK).astimezone(zone) - timedelta(minutes=1)
    last = None
    for moment in CronSim(cron, start):
        if moment > now:
            break
        if moment >= not_before:
            last = moment
    return last.astimezone(now.tzinfo) if last else None


def run_schedules(runtime: Runtime, *, now: datetime | None = None) -> dict[str, int]:
    """Enrol the audience of every scheduled journey whose latest run is not yet enrolled.

    A run is identified by its cron time (``run:<time>``): running this twice, or from two
    workers, enrols each contact once per run. Runs missed while nothing ticked are not
    replayed one by one: only the latest is.
    """
    now = now or utcnow()
    enrolled: dict[str, int] = {}
    for version in newest_active(runtime.engine.versions()):
        trigger = version.journey.trigger
        if not isinstance(trigger, s.ScheduleTrigger):
            continue
        with Session(runtime.db) as session:
            created = session.scalar(
                select(JourneyRow.created_at).where(JourneyRow.id == version.id)
            )
        moment = latest_occurrence(
            trigger.cron, trigger.timezone, now=now, not_before=created or now
        )
        if moment is not None:
            enrolled[version.name] = runtime.engine.enroll_segment(version, now=moment)
    return enrolled

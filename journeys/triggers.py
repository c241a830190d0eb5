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
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from crm.models import Event, Message
from crm.models import Journey as JourneyRow
from crm.types import utcnow
from journeys import schema as s
from journeys.engine import Version, wake_waiting
from journeys.runtime import Runtime

SCHEDULE_LOOKBACK = timedelta(days=35)


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


def active_versions(runtime: Runtime) -> list[Version]:
    """The newest version of every active journey (new entries go there)."""
    with Session(runtime.db) as session:
        names = list(session.scalars(select(JourneyRow.name).distinct()))
    latest = []
    for name in names:
        versions = runtime.engine.versions(name)
        if versions and versions[-1].status == "active":
            latest.append(versions[-1])
    return latest


def _matches(properties: dict[str, Any], where: dict[str, Any]) -> bool:
    return all(properties.get(k) == v for k, v in where.items())


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
        insert = postgresql.insert if runtime.db.dialect.name == "postgresql" else sqlite.insert
        stored = session.execute(
            insert(Event)
            .values(
                contact_id=contact_id,
                name=name,
                properties=properties,
                occurred_at=occurred_at,
                received_at=now,
                source=source,
                idempotency_key=key,
            )
            .on_conflict_do_nothing()
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
    versions = active_versions(runtime)
    urgent: list[tuple[Version, list[int]]] = []
    for version in versions:
        t = version.journey.trigger
        if isinstance(t, s.EventTrigger) and t.event == name and _matches(properties, t.where):
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
    with Session(runtime.db) as session, session.begin():
        outcome.woken = wake_waiting(
            session,
            contact_id=contact_id,
            event=name,
            versions=[v for n in {v.name for v in versions} for v in runtime.engine.versions(n)],
            now=now,
        )
    for version, ids in urgent:
        all_versions = {v.id: v for v in runtime.engine.versions(version.name)}
        runtime.engine.tick_batch(all_versions, now=now, batch_size=len(ids), only=ids)
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
    for version in active_versions(runtime):
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

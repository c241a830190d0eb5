"""What starts journeys: posted events (with the transactional fast path), API calls, schedules.

``post_event`` is the one entry for an event, whoever posts it (CLI, API, import of a live
feed): it stores the event once (idempotency key), enrols the contact in every active journey
the event triggers, wakes enrollments waiting for it, and for a *transactional* journey runs
the new enrollments and sends their messages at once, in the same call: an order-status SMS
does not wait for the next tick.

>>> outcome = post_event(runtime, contact_id=7, name="order.shipped",
...                      properties={"order": {"number": "1"}})  # doctest: +SKIP
>>> outcome.sent                                                  # doctest: +SKIP
1

``trigger_journey`` is the one entry for a ``type: api`` journey, whoever fires it (``tidings
journey trigger``, ``POST /v1/journeys/{name}/trigger``): it names the contacts (unknown ones
refuse the whole call, nothing is enrolled), enrols them with their ``data`` as the enrollment
context (templates read ``{{ data.code }}``, or ``{{ code }}``), advances the new enrollments and
sends what they produced in the same call.

>>> outcome = trigger_journey(runtime, "spring_launch",
...                           [Target("C0002", data={"code": "SPRING"})])  # doctest: +SKIP
>>> outcome.enrolled, outcome.sent                                      # doctest: +SKIP
(1, 1)
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim
from sqlalchemy import Table, or_, select
from sqlalchemy.orm import Session

from tidings.crm.db import insert_ignore
from tidings.crm.models import Contact, Enrollment, Event, Message
from tidings.crm.models import Journey as JourneyRow
from tidings.crm.types import utcnow
from tidings.errors import InputError
from tidings.journeys import schema as s
from tidings.journeys.dispatch import DispatchStats
from tidings.journeys.engine import Version, wake_waiting
from tidings.journeys.failures import failure_report
from tidings.journeys.runtime import Runtime
from tidings.journeys.state import matches
from tidings.segments.inputs import Change
from tidings.segments.live import drain, plan, record

SCHEDULE_LOOKBACK = timedelta(days=35)
CHUNK = 1000  # enrollments advanced and sent per step of a trigger
events_t: Table = Event.__table__  # type: ignore[assignment]


@dataclass
class EventOutcome:
    event_id: int | None
    duplicate: bool
    enrollments: dict[str, list[int]] = field(default_factory=dict)
    woken: int = 0
    converted: int = 0
    sent: int = 0
    failed: int = 0
    retry: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Each reason a message was not sent: status, reason, count, contacts."""


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
    live: bool = True,
) -> EventOutcome:
    """Store the event and do what it starts (module docstring). The change is queued for the
    live segments that read it with the event (``segments.live.record``); ``live``: drain that
    queue in this call too (a command's caller sees the memberships at once; the web app's
    loop does it for the API)."""
    now = now or utcnow()
    occurred_at = occurred_at or now
    properties = properties or {}
    key = idempotency_key or event_key(contact_id, name, occurred_at, properties)
    live_plan = plan(runtime.engine)  # before the transaction (SQLite: one connection at a time)
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
        if stored is not None:
            record(session, live_plan, [(contact_id, Change.event(name))], now=now)
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
                in_call=version.journey.settings.transactional,
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
    if live:
        drain(runtime.engine, now=now)
    goals = [v for v in every if v.journey.settings.goal and v.journey.settings.goal.event == name]
    if goals:  # converted at once, whether the contact is waiting, finished or exited
        outcome.converted = runtime.engine.convert(goals, now=now, contact_id=contact_id)[0]
    sent = DispatchStats()
    for version, ids in urgent:
        of_journey = {v.id: v for v in every if v.name == version.name}
        sent.add(advance_and_send(runtime, of_journey, ids, now=now))
    outcome.sent, outcome.failed, outcome.retry = sent.sent, sent.failed, sent.retry
    outcome.failures = failure_report(runtime.db, sent) if sent.problems else []
    return outcome


def starts_something(versions: list[Version], name: str) -> bool:
    """Whether an event named ``name`` may enrol someone (an event trigger) or convert (a
    goal); ``versions`` from ``engine.versions()``. Other events are stored in bulk
    (``store_events``)."""
    for version in newest_active(versions):
        t = version.journey.trigger
        if isinstance(t, s.EventTrigger) and t.event == name:
            return True
    return any(v.journey.settings.goal and v.journey.settings.goal.event == name for v in versions)


def store_events(
    runtime: Runtime, events: list[dict[str, Any]], *, versions: list[Version], now: datetime
) -> list[int | None]:
    """Store events that start nothing (``starts_something`` is false for each) in one
    statement, queue them for the live segments and wake the enrollments waiting for them: what
    ``post_event`` (with ``live=False``) does for such an event, for a whole batch. Each event:
    ``contact_id``, ``name``, ``properties``, ``occurred_at``, ``idempotency_key`` (None:
    derived as ``post_event`` does), ``source``.
    Returns each event's new id, None for one stored before (or twice in the batch)."""
    rows = []
    for event in events:
        properties = event.get("properties") or {}
        key = event.get("idempotency_key") or event_key(
            event["contact_id"], event["name"], event["occurred_at"], properties
        )
        rows.append(
            {
                "contact_id": event["contact_id"],
                "name": event["name"],
                "properties": properties,
                "occurred_at": event["occurred_at"],
                "received_at": now,
                "source": event.get("source") or "api",
                "idempotency_key": key,
            }
        )
    if not rows:
        return []
    active = {v.name for v in newest_active(versions)}
    awaited = {
        step.event
        for v in versions
        if v.name in active
        for step in v.journey.steps
        if isinstance(step, s.WaitForEventStep)
    }
    live_plan = plan(runtime.engine)
    with Session(runtime.db) as session, session.begin():
        stored = {
            key: event_id
            for event_id, key in session.execute(
                insert_ignore(session, events_t).returning(Event.id, Event.idempotency_key),
                rows,
            )
        }
        new = sorted({(r["contact_id"], r["name"]) for r in rows if r["idempotency_key"] in stored})
        record(session, live_plan, [(cid, Change.event(name)) for cid, name in new], now=now)
        for contact_id, name in new:
            if name in awaited:
                wake_waiting(
                    session,
                    contact_id=contact_id,
                    event=name,
                    versions=[v for v in versions if v.name in active],
                    now=now,
                )
    return [stored.pop(row["idempotency_key"], None) for row in rows]


def runs_at_once(versions: list[Version], name: str, properties: dict[str, Any]) -> bool:
    """Whether event ``name`` triggers a transactional journey (sent in the call that posts
    it); ``versions`` from ``engine.versions()``."""
    for version in newest_active(versions):
        t = version.journey.trigger
        if (
            isinstance(t, s.EventTrigger)
            and t.event == name
            and version.journey.settings.transactional
            and matches(properties, t.where)
        ):
            return True
    return False


def advance_and_send(
    runtime: Runtime, versions: dict[int, Version], enrollment_ids: list[int], *, now: datetime
) -> DispatchStats:
    """Advance these new enrollments now and send the messages they produced, a chunk at a
    time (the transactional path: nothing waits for the next tick)."""
    stats = DispatchStats()
    for chunk in _chunks(enrollment_ids, CHUNK):
        runtime.engine.tick_batch(
            versions, now=now, batch_size=len(chunk), only=chunk, in_call=True
        )
        with Session(runtime.db) as session:
            message_ids = list(
                session.scalars(
                    select(Message.id).where(
                        Message.enrollment_id.in_(chunk), Message.status == "queued"
                    )
                )
            )
        stats.add(runtime.dispatcher.dispatch(now=now, only=message_ids))
    return stats


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- API triggers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A contact named by a trigger: ``ref`` is an external id or an email (``by="any"``, as
    the CLI's ``--contact``; ``#<id>`` is an id), or ``by`` says which; ``data`` is what its
    templates get (merged over the call's common data)."""

    ref: str
    by: str = "any"  # any | external_id | email | contact_id
    data: dict[str, Any] = field(default_factory=dict)


class TriggerRefused(InputError):
    """The journey cannot be triggered: unknown (404), not ``type: api`` (422), paused (409)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class UnknownContacts(InputError):
    """Some targets name no contact: nothing was enrolled. ``unknown``: (index, target)."""

    def __init__(self, unknown: list[tuple[int, Target]]) -> None:
        shown = ", ".join(repr(t.ref) for _, t in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        super().__init__(
            f"{len(unknown)} contact(s) not found: {shown}{more}; nothing was triggered",
            hint="import them first (tidings contacts import FILE), or leave them out",
        )
        self.unknown = unknown


@dataclass
class TriggerOutcome:
    journey: str
    named: int = 0
    enrolled: int = 0
    already: int = 0
    """Named, but kept out by the journey's re-entry rule (or the same key was used before)."""
    contact_ids: list[int] = field(default_factory=list)
    """The contact id of each target, in order."""
    contacts: dict[int, bool] = field(default_factory=dict)
    """contact id -> enrolled by this call."""
    sent: int = 0
    failed: int = 0
    retry: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


def api_version(runtime: Runtime, name: str) -> tuple[Version, dict[int, Version]]:
    """The newest version of ``name`` (and all its versions), if it can be triggered."""
    versions = runtime.engine.versions(name)
    if not versions:
        raise TriggerRefused(
            f"no journey named {name!r} is registered",
            status=404,
            hint="register it: tidings journey run FILE, or tidings journey tick",
        )
    latest = versions[-1]
    trigger = latest.journey.trigger
    if not isinstance(trigger, s.ApiTrigger):
        raise TriggerRefused(
            f"journey {name!r} has trigger type {trigger.type!r}: only `type: api` journeys "
            "can be triggered by a call",
            status=422,
            hint="an event starts a `type: event` journey: tidings events post, POST /v1/events",
        )
    if latest.status != "active":
        raise TriggerRefused(
            f"journey {name!r} is paused: nothing was enrolled or sent",
            status=409,
            hint=f"tidings journey resume {name}",
        )
    return latest, {v.id: v for v in versions}


def _is_id(target: Target) -> bool:
    ref = target.ref.strip()
    return target.by == "contact_id" or (
        target.by == "any" and ref.startswith("#") and ref[1:].isdigit()
    )


def resolve_targets(runtime: Runtime, targets: Sequence[Target]) -> list[int | None]:
    """The contact id of each target (None where none matches); an external id wins over an
    email when a ``by="any"`` ref matches both."""
    ids = sorted({int(t.ref.strip().lstrip("#")) for t in targets if _is_id(t)})
    refs = sorted({t.ref.strip() for t in targets if not _is_id(t)})
    emails = sorted({r.lower() for r in refs})
    by_id: set[int] = set()
    by_ext: dict[str, int] = {}
    by_email: dict[str, int] = {}
    with runtime.db.connect() as conn:
        for start in range(0, max(len(ids), len(refs)), CHUNK):
            rows = conn.execute(
                select(Contact.id, Contact.external_id, Contact.email)
                .where(
                    or_(
                        Contact.id.in_(ids[start : start + CHUNK]),
                        Contact.external_id.in_(refs[start : start + CHUNK]),
                        Contact.email.in_(emails[start : start + CHUNK]),
                    ),
                    Contact.erased_at.is_(None),  # erased: enters no journey
                )
                .order_by(Contact.id)
            )
            for cid, ext, email in rows:
                by_id.add(cid)
                if ext:
                    by_ext[ext] = cid
                if email:
                    by_email.setdefault(email, cid)
    found: list[int | None] = []
    for t in targets:
        ref = t.ref.strip()
        if _is_id(t):
            cid = int(ref.lstrip("#"))
            found.append(cid if cid in by_id else None)
        elif t.by == "external_id":
            found.append(by_ext.get(ref))
        elif t.by == "email":
            found.append(by_email.get(ref.lower()))
        else:
            found.append(by_ext.get(ref) or by_email.get(ref.lower()))
    return found


def segment_targets(runtime: Runtime, segment: str, *, now: datetime | None = None) -> list[Target]:
    """The contacts in ``segment`` now, as targets (by id)."""
    from tidings.segments.loader import load_catalog
    from tidings.segments.membership import segment_statement

    catalog = runtime.engine.catalog or load_catalog(runtime.settings.segments_dir, strict=False)
    statement = segment_statement(
        catalog.get(segment), catalog=catalog, dialect=runtime.db.dialect.name, now=now or utcnow()
    )
    with runtime.db.connect() as conn:
        return [Target(f"#{cid}", by="contact_id") for cid in conn.execute(statement).scalars()]


def trigger_journey(
    runtime: Runtime,
    name: str,
    targets: Sequence[Target],
    *,
    data: dict[str, Any] | None = None,
    key: str | None = None,
    source: str = "api",
    now: datetime | None = None,
) -> TriggerOutcome:
    """Enrol ``targets`` in the ``type: api`` journey ``name`` and send at once.

    ``data`` is common to every target (a target's own ``data`` wins, key by key). ``key``
    makes the call retry-safe: the same key enrols nobody twice (entry key ``api:<key>``); a
    call without one is a new entry, subject to the journey's re-entry rule. Raises
    ``TriggerRefused`` (unknown journey, not ``type: api``, paused) and ``UnknownContacts``
    (before anything is written)."""
    now = now or utcnow()
    latest, versions = api_version(runtime, name)
    found = resolve_targets(runtime, targets)
    unknown = [(i, t) for i, (t, cid) in enumerate(zip(targets, found, strict=True)) if cid is None]
    if unknown:
        raise UnknownContacts(unknown)
    contact_ids = [cid for cid in found if cid is not None]
    entry_key = f"api:{key}" if key else f"api:{uuid.uuid4().hex}"
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for target, cid in zip(targets, contact_ids, strict=True):
        values = {**(data or {}), **target.data}
        body = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(body, (values, []))[1].append(cid)
    new: list[int] = []
    for values, ids in groups.values():  # one enrolment per distinct data
        trigger = {
            "type": "api",
            "journey": name,
            "properties": values,
            "occurred_at": now.isoformat(),
            "source": source,
        }
        new += runtime.engine.enroll_contacts(
            latest,
            ids,
            entry_key=entry_key,
            context={"trigger": trigger, "data": values},
            now=now,
            in_call=True,
        )
    entered: set[int] = set()
    with runtime.db.connect() as conn:
        for chunk in _chunks(new, CHUNK):
            entered.update(
                conn.execute(
                    select(Enrollment.contact_id).where(Enrollment.id.in_(chunk))
                ).scalars()
            )
    outcome = TriggerOutcome(journey=name, named=len(set(contact_ids)), enrolled=len(entered))
    outcome.already = outcome.named - outcome.enrolled
    outcome.contact_ids = contact_ids
    outcome.contacts = {cid: cid in entered for cid in contact_ids}
    sent = advance_and_send(runtime, versions, new, now=now)
    outcome.sent, outcome.failed, outcome.retry = sent.sent, sent.failed, sent.retry
    outcome.failures = failure_report(runtime.db, sent) if sent.problems else []
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

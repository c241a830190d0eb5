"""The journey engine: versions, enrollment, and the tick that advances due enrollments.

Everything is set-based per batch: a tick claims up to ``batch_size`` due enrollments
(PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so several workers can tick the same journey), then
moves them through their steps in *waves*: all enrollments standing on the same step are
handled together (one policy query, one insert of messages, one update of enrollments), until
each is parked at a wait, deferred by quiet hours, or finished. Messages are written to the
outbox (status ``queued``) in the same transaction as the enrollment moves that made them;
``journeys.dispatch`` renders and sends them afterwards. The unique message idempotency key
(journey version, enrollment, step, visit) is the final guard against a double send.

>>> engine = JourneyEngine(db=db, settings=settings)      # doctest: +SKIP
>>> version = engine.register(journey)                      # doctest: +SKIP
>>> engine.enroll_segment(version, now=now)                 # doctest: +SKIP
>>> engine.tick("welcome", now=now)                         # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, assert_never
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    and_,
    bindparam,
    cast,
    exists,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from crm.models import (
    Assignment,
    Contact,
    Conversion,
    Enrollment,
    Event,
    Experiment,
    Message,
    MessageStatus,
    SegmentMembership,
)
from crm.models import Journey as JourneyRow
from crm.types import utcnow
from journeys import schema as s
from journeys.experiments import HOLDOUT, bucket, variant_for
from journeys.graph import following
from journeys.loader import version_hash
from journeys.policy import Candidate, Rules, gate
from tidings.config import Settings, get_settings
from tidings.errors import InputError

MAX_WAVES = 64  # steps one enrollment may take in one tick (loops always contain a wait)
enrollments_t: Table = Enrollment.__table__  # type: ignore[assignment]
messages_t: Table = Message.__table__  # type: ignore[assignment]
contacts_t: Table = Contact.__table__  # type: ignore[assignment]
conversions_t: Table = Conversion.__table__  # type: ignore[assignment]
assignments_t: Table = Assignment.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Version:
    id: int
    name: str
    hash: str
    journey: s.Journey
    status: str

    def step(self, step_id: str) -> tuple[int, s.Step]:
        for index, step in enumerate(self.journey.steps):
            if step.id == step_id:
                return index, step
        raise KeyError(f"journey {self.name!r} version {self.hash[:8]} has no step {step_id!r}")

    def after(self, step_id: str) -> str | None:
        index, step = self.step(step_id)
        return step.next if step.next is not None else following(self.journey, index)


@dataclass
class Item:
    """One enrollment while a tick moves it."""

    id: int
    version: Version
    contact_id: int
    step_id: str | None
    context: dict[str, Any]
    entered_at: datetime
    status: str = "active"
    next_due_at: datetime | None = None
    exit_reason: str | None = None
    parked: bool = False

    def go(self, step_id: str | None) -> None:
        if step_id is None:
            self.finish("end")
        else:
            self.step_id = step_id

    def park(self, until: datetime) -> None:
        self.next_due_at = until
        self.parked = True

    def finish(self, reason: str) -> None:
        self.status = "completed" if reason in {"end", "exit_step"} else "exited"
        self.exit_reason = reason
        self.next_due_at = None
        self.parked = True

    def visit(self, step_id: str) -> int:
        visits = self.context.setdefault("visits", {})
        visits[step_id] = visits.get(step_id, 0) + 1
        return int(visits[step_id])


@dataclass
class TickStats:
    processed: int = 0
    messages: int = 0
    held: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    deferred: int = 0
    completed: int = 0
    exited: int = 0
    ids: list[int] = field(default_factory=list)  # the enrollments this tick moved
    deferred_steps: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: TickStats) -> None:
        self.processed += other.processed
        self.messages += other.messages
        self.deferred += other.deferred
        self.completed += other.completed
        self.exited += other.exited
        self.ids += other.ids
        for step, n in other.deferred_steps.items():
            self.deferred_steps[step] += n
        for reason, n in other.held.items():
            self.held[reason] += n


def parse_cap(text: str | None) -> tuple[int | None, float]:
    """``"3 per 7 days"`` -> (3, seconds); None or "off" -> no cap."""
    from segments.rules import parse_duration

    if not text or text.strip().lower() in {"off", "none", "false"}:
        return None, 0.0
    count, _, window = text.partition(" per ")
    if not window or not count.strip().isdigit():
        raise InputError(f"frequency cap {text!r}: write it as '3 per 7 days'")
    return int(count), parse_duration(window)


def parse_quiet(text: str | None) -> tuple[Any, Any]:
    if not text or text.strip().lower() in {"off", "none", "false"}:
        return None, None
    start, _, end = text.partition("-")
    hours = s.QuietHours.model_validate({"start": start.strip(), "end": end.strip()})
    return hours.start, hours.end


def _insert_ignore(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        session.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def _zone(name: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


class JourneyEngine:
    def __init__(
        self,
        *,
        db: Engine | Connection,
        settings: Settings | None = None,
        catalog: Any = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings or get_settings()
        self.catalog = catalog
        self.clock = clock
        self._versions: dict[int, Version] = {}

    # -- versions ------------------------------------------------------------------------
    def register(self, journey: s.Journey) -> Version:
        """Store this version of the journey (once per content hash); new entries use it."""
        digest = version_hash(journey)
        with Session(self.db) as session, session.begin():
            row = session.scalar(
                select(JourneyRow).where(
                    JourneyRow.name == journey.name, JourneyRow.version_hash == digest
                )
            )
            status = (
                session.scalar(
                    select(JourneyRow.status)
                    .where(JourneyRow.name == journey.name)
                    .order_by(JourneyRow.id.desc())
                    .limit(1)
                )
                or "active"
            )
            if row is None:
                row = JourneyRow(
                    name=journey.name,
                    version_hash=digest,
                    definition=journey.model_dump(mode="json"),
                    status=status,
                )
                session.add(row)
                session.flush()
            version = Version(row.id, journey.name, digest, journey, row.status)
        self._versions[version.id] = version
        return version

    def versions(self, name: str) -> list[Version]:
        """Every stored version of ``name``, oldest first (in-flight contacts keep theirs)."""
        with Session(self.db) as session:
            rows = session.execute(
                select(
                    JourneyRow.id, JourneyRow.version_hash, JourneyRow.definition, JourneyRow.status
                )
                .where(JourneyRow.name == name)
                .order_by(JourneyRow.id)
            ).all()
        found = []
        for vid, digest, definition, status in rows:
            cached = self._versions.get(vid)
            if cached is None or cached.status != status:
                journey = cached.journey if cached else s.Journey.model_validate(definition)
                cached = Version(vid, name, digest, journey, status)
                self._versions[vid] = cached
            found.append(cached)
        return found

    def set_status(self, name: str, status: str) -> int:
        """Pause or resume every version of a journey; returns the versions touched."""
        with Session(self.db) as session, session.begin():
            result = session.execute(
                update(JourneyRow).where(JourneyRow.name == name).values(status=status)
            )
        return _rowcount(result)

    # -- enrollment ----------------------------------------------------------------------
    def _enroll(
        self,
        session: Session,
        version: Version,
        candidates: Any,
        *,
        now: datetime,
        context: dict[str, Any] | None = None,
    ) -> list[int]:
        """INSERT ... SELECT the candidate (contact_id, entry_key) rows, honouring re-entry;
        returns the ids of the new enrollments."""
        journey = version.journey
        sub = candidates.subquery()
        others = (
            select(Enrollment.id)
            .join(JourneyRow, JourneyRow.id == Enrollment.journey_id)
            .where(JourneyRow.name == version.name, Enrollment.contact_id == sub.c.contact_id)
        )
        key: ColumnElement[Any]
        reentry = journey.settings.reentry
        if reentry == "never":
            guard = ~exists(others)
            key = literal("once")
        elif reentry == "always":
            guard = ~exists(others.where(Enrollment.entry_key == sub.c.entry_key))
            key = sub.c.entry_key
        else:
            since = now - timedelta(seconds=reentry.after)
            guard = ~exists(
                others.where(
                    (Enrollment.entered_at >= since) | (Enrollment.entry_key == sub.c.entry_key)
                )
            )
            key = sub.c.entry_key
        first = journey.steps[0].id
        query = select(
            literal(version.id),
            sub.c.contact_id,
            key,
            literal("active"),
            literal(first),
            literal(now, type_=Enrollment.next_due_at.type),
            literal(now, Enrollment.entered_at.type),
            literal(now, Enrollment.updated_at.type),
            literal(context or {}, Enrollment.context.type),
        ).where(guard)
        limit = journey.settings.max_enrollments_per_run
        if limit:
            query = query.limit(limit)
        insert = (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert
        stmt = (
            insert(enrollments_t)
            .from_select(
                [
                    "journey_id",
                    "contact_id",
                    "entry_key",
                    "status",
                    "step_id",
                    "next_due_at",
                    "entered_at",
                    "updated_at",
                    "context",
                ],
                query,
            )
            .on_conflict_do_nothing()
            .returning(enrollments_t.c.id)
        )
        return [row[0] for row in session.execute(stmt)]

    def enroll_segment(self, version: Version, *, now: datetime | None = None) -> int:
        """Enrol everyone who is in the trigger segment (each segment entry once)."""
        from segments.membership import refresh

        trigger = version.journey.trigger
        if not isinstance(trigger, s.SegmentTrigger | s.ScheduleTrigger):
            raise InputError(f"journey {version.name!r} is not triggered by a segment")
        now = now or self.clock()
        segment = self._catalog().get(trigger.segment)
        with Session(self.db) as session, session.begin():
            if isinstance(trigger, s.SegmentTrigger):
                refresh(segment, session=session, now=now, catalog=self._catalog())
                m = SegmentMembership
                candidates = select(
                    m.contact_id.label("contact_id"),
                    (literal("m:") + cast(m.id, String)).label("entry_key"),
                ).where(m.segment == trigger.segment, m.exited_at.is_(None))
            else:
                from segments.membership import segment_statement

                ids = segment_statement(
                    segment, dialect=self.db.dialect.name, now=now, catalog=self._catalog()
                ).subquery()
                candidates = select(
                    ids.c.id.label("contact_id"),
                    literal(f"run:{now.isoformat(timespec='minutes')}").label("entry_key"),
                )
            return len(self._enroll(session, version, candidates, now=now))

    def enroll_select(
        self, version: Version, candidates: Any, *, now: datetime | None = None
    ) -> int:
        """Enrol the contacts a query selects (columns ``contact_id`` and ``entry_key``)."""
        now = now or self.clock()
        with Session(self.db) as session, session.begin():
            return len(self._enroll(session, version, candidates, now=now))

    def enroll_contacts(
        self,
        version: Version,
        contact_ids: Iterable[int],
        *,
        entry_key: str,
        context: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> list[int]:
        """Enrol named contacts (API/CLI call, or the contact an event is about); returns
        the new enrollment ids (none for a contact the re-entry rule keeps out)."""
        now = now or self.clock()
        ids = sorted(set(contact_ids))
        if not ids:
            return []
        with Session(self.db) as session, session.begin():
            candidates = select(
                contacts_t.c.id.label("contact_id"), literal(entry_key).label("entry_key")
            ).where(contacts_t.c.id.in_(ids))
            return self._enroll(session, version, candidates, now=now, context=context)

    def _catalog(self) -> Any:
        if self.catalog is None:
            from segments.loader import DEFAULT_DIR, load_catalog

            self.catalog = load_catalog(DEFAULT_DIR)
        return self.catalog

    # -- the tick ------------------------------------------------------------------------
    def tick(self, name: str, *, now: datetime | None = None, batch_size: int = 1000) -> TickStats:
        """Advance every due enrollment of journey ``name`` (all its versions)."""
        total = TickStats()
        versions = {v.id: v for v in self.versions(name) if v.status == "active"}
        if not versions:
            return total
        while True:
            stats = self.tick_batch(versions, now=now or self.clock(), batch_size=batch_size)
            total.add(stats)
            if stats.processed < batch_size:
                return total

    def tick_batch(
        self,
        versions: dict[int, Version],
        *,
        now: datetime,
        batch_size: int,
        only: Iterable[int] | None = None,
    ) -> TickStats:
        """One transaction: claim up to ``batch_size`` due enrollments (or just ``only``)."""
        stats = TickStats()
        with Session(self.db) as session, session.begin():
            claim = (
                select(
                    Enrollment.id,
                    Enrollment.journey_id,
                    Enrollment.contact_id,
                    Enrollment.step_id,
                    Enrollment.context,
                    Enrollment.entered_at,
                )
                .where(
                    Enrollment.journey_id.in_(versions),
                    Enrollment.status == "active",
                    Enrollment.next_due_at <= now,
                )
                .order_by(Enrollment.next_due_at, Enrollment.id)
                .limit(batch_size)
            )
            if only is not None:
                claim = claim.where(Enrollment.id.in_(list(only)))
            if self.db.dialect.name == "postgresql":
                claim = claim.with_for_update(skip_locked=True)
            items = [
                Item(eid, versions[jid], cid, step, dict(ctx or {}), entered)
                for eid, jid, cid, step, ctx, entered in session.execute(claim)
            ]
            stats.processed = len(items)
            stats.ids = [i.id for i in items]
            if not items:
                return stats
            self._check_goals(session, items, now)
            messages: list[dict[str, Any]] = []
            active = [i for i in items if not i.parked]
            for _ in range(MAX_WAVES):
                if not active:
                    break
                groups: dict[tuple[int, str], list[Item]] = defaultdict(list)
                for item in active:
                    if item.step_id is None:
                        item.finish("end")
                        continue
                    groups[(item.version.id, item.step_id)].append(item)
                for (vid, step_id), group in groups.items():
                    _, step = versions[vid].step(step_id)
                    self._run_step(session, step, group, now, messages, stats)
                active = [i for i in active if not i.parked]
            for item in active:  # a loop that did not reach a wait in MAX_WAVES steps
                item.park(now + timedelta(minutes=1))
            _insert_ignore(session, messages_t, messages)
            stats.messages = sum(1 for m in messages if m["status"] == MessageStatus.QUEUED.value)
            session.execute(
                update(enrollments_t)
                .where(enrollments_t.c.id == bindparam("b_id"))
                .values(
                    step_id=bindparam("b_step"),
                    status=bindparam("b_status"),
                    next_due_at=bindparam("b_due"),
                    context=bindparam("b_ctx"),
                    updated_at=bindparam("b_now"),
                    exit_reason=bindparam("b_reason"),
                    exited_at=bindparam("b_exited"),
                ),
                [
                    {
                        "b_id": i.id,
                        "b_step": i.step_id,
                        "b_status": i.status,
                        "b_due": i.next_due_at,
                        "b_ctx": i.context,
                        "b_now": now,
                        "b_reason": i.exit_reason,
                        "b_exited": now if i.status != "active" else None,
                    }
                    for i in items
                ],
            )
        stats.completed = sum(1 for i in items if i.status == "completed")
        stats.exited = sum(1 for i in items if i.status == "exited")
        return stats

    def _check_goals(self, session: Session, items: list[Item], now: datetime) -> None:
        """Enrollments whose contact reached the goal exit (if the goal says so) and convert."""
        by_goal: dict[int, list[Item]] = defaultdict(list)
        for item in items:
            if item.version.journey.settings.goal is not None:
                by_goal[item.version.id].append(item)
        for group in by_goal.values():
            goal = group[0].version.journey.settings.goal
            assert goal is not None
            earliest = min(i.entered_at for i in group)
            rows = session.execute(
                select(Event.id, Event.contact_id, Event.occurred_at, Event.properties)
                .where(
                    Event.contact_id.in_({i.contact_id for i in group}),
                    Event.name == goal.event,
                    Event.occurred_at >= earliest,
                    Event.occurred_at <= now,
                )
                .order_by(Event.occurred_at)
            ).all()
            conversions = []
            for item in group:
                hit = next(
                    (
                        r
                        for r in rows
                        if r.contact_id == item.contact_id
                        and item.entered_at
                        <= r.occurred_at
                        <= item.entered_at + timedelta(seconds=goal.within)
                        and _matches(r.properties, goal.where)
                    ),
                    None,
                )
                if hit is None:
                    continue
                conversions.append(
                    {
                        "idempotency_key": f"goal:{item.id}",
                        "contact_id": item.contact_id,
                        "kind": "event",
                        "goal": f"{item.version.name}:{goal.event}",
                        "event_id": hit.id,
                        "occurred_at": hit.occurred_at,
                        "value": (hit.properties or {}).get("value", 0) or 0,
                    }
                )
                if goal.exit:
                    item.finish("goal")
            _insert_ignore(session, conversions_t, conversions)

    def _run_step(
        self,
        session: Session,
        step: s.Step,
        group: list[Item],
        now: datetime,
        messages: list[dict[str, Any]],
        stats: TickStats,
    ) -> None:
        match step:
            case s.EmailStep() | s.SmsStep():
                self._send(session, step, group, now, messages, stats)
            case s.WaitStep():
                for item in group:
                    if self._woken(item, step.id):
                        item.go(item.version.after(step.id))
                    else:
                        self._wait(item, step.id, now, now + timedelta(seconds=step.duration))
            case s.WaitUntilStep():
                self._wait_until(session, step, group, now)
            case s.WaitForEventStep():
                self._wait_for_event(session, step, group, now)
            case s.BranchStep():
                self._branch(session, step, group, now)
            case s.SplitStep():
                weights = [(str(n), p.weight) for n, p in enumerate(step.paths)]
                for item in group:
                    chosen = variant_for(f"{item.version.name}.{step.id}", item.contact_id, weights)
                    item.go(step.paths[int(chosen)].next)
            case s.UpdateContactStep():
                self._update_contacts(session, step, group, now)
                for item in group:
                    item.go(item.version.after(step.id))
            case s.WebhookStep():
                self._webhook(step, group, now)
            case s.ExitStep():
                for item in group:
                    item.finish("exit_step")
            case _:
                assert_never(step)

    # -- waits ---------------------------------------------------------------------------
    @staticmethod
    def _woken(item: Item, step_id: str) -> bool:
        waiting = item.context.get("waiting")
        return isinstance(waiting, dict) and waiting.get("step") == step_id

    @staticmethod
    def _wait(item: Item, step_id: str, now: datetime, until: datetime) -> None:
        item.context["waiting"] = {
            "step": step_id,
            "since": now.isoformat(),
            "until": until.isoformat(),
        }
        item.park(until)

    @staticmethod
    def _done_waiting(item: Item, step_id: str | None) -> None:
        item.context.pop("waiting", None)
        item.go(step_id)

    def _wait_until(
        self, session: Session, step: s.WaitUntilStep, group: list[Item], now: datetime
    ) -> None:
        contacts = self._contacts(session, [i for i in group if not self._woken(i, step.id)])
        for item in group:
            if self._woken(item, step.id):
                self._done_waiting(item, item.version.after(step.id))
                continue
            row = contacts[item.contact_id]
            zone = _zone(row["timezone"], self.settings.default_timezone)
            if step.attribute:
                day = _as_date((row["attributes"] or {}).get(step.attribute))
                if day is None:
                    item.finish("missing_attribute")
                    continue
                if step.offset:
                    from segments.rules import parse_duration

                    sign = -1 if step.offset.strip().startswith("-") else 1
                    day += timedelta(
                        seconds=sign * parse_duration(step.offset.lstrip("+-").strip())
                    )
                due = datetime.combine(day, step.at, tzinfo=zone)
            else:
                local = now.astimezone(zone)
                due = datetime.combine(local.date(), step.at, tzinfo=zone)
                if due <= now:
                    due = datetime.combine(local.date() + timedelta(days=1), step.at, tzinfo=zone)
            if due.astimezone(UTC) <= now:
                self._done_waiting(item, item.version.after(step.id))
            else:
                self._wait(item, step.id, now, due.astimezone(UTC))

    def _wait_for_event(
        self, session: Session, step: s.WaitForEventStep, group: list[Item], now: datetime
    ) -> None:
        waking = [i for i in group if self._woken(i, step.id)]
        for item in group:
            if item not in waking:
                self._wait(item, step.id, now, now + timedelta(seconds=step.timeout))
        if not waking:
            return
        since = {i.id: datetime.fromisoformat(i.context["waiting"]["since"]) for i in waking}
        rows = session.execute(
            select(Event.contact_id, Event.occurred_at, Event.properties).where(
                Event.contact_id.in_({i.contact_id for i in waking}),
                Event.name == step.event,
                Event.occurred_at >= min(since.values()),
            )
        ).all()
        for item in waking:
            hit = any(
                r.contact_id == item.contact_id
                and r.occurred_at >= since[item.id]
                and _matches(r.properties, step.where)
                for r in rows
            )
            until = datetime.fromisoformat(item.context["waiting"]["until"])
            if hit:
                self._done_waiting(item, item.version.after(step.id))
            elif now >= until:
                self._done_waiting(item, step.on_timeout)
            else:  # woken early by something else: keep waiting
                item.park(until)

    # -- decisions -----------------------------------------------------------------------
    def _branch(
        self, session: Session, step: s.BranchStep, group: list[Item], now: datetime
    ) -> None:
        from segments.compile import compile_core
        from segments.rules import Segment

        pending = {i.contact_id: i for i in group}
        for n, branch in enumerate(step.branches):
            if not pending:
                break
            segment = Segment(name=f"{group[0].version.name}.{step.id}.{n}", rule=branch.when)
            query = compile_core(
                self._catalog().core(segment), dialect=self.db.dialect.name, now=now
            )
            ids = query.subquery()
            hits = set(session.scalars(select(ids.c.id).where(ids.c.id.in_(pending))))
            for cid in hits:
                pending.pop(cid).go(branch.next)
        for item in pending.values():
            item.go(step.otherwise)

    def _update_contacts(
        self, session: Session, step: s.UpdateContactStep, group: list[Item], now: datetime
    ) -> None:
        from templates.render import contact_context, make_environment

        env = make_environment(autoescape=False)
        contacts = self._contacts(session, group)
        rows = []
        for item in group:
            row = contacts[item.contact_id]
            values = {"contact": contact_context(row), "trigger": item.context.get("trigger", {})}
            attributes = dict(row["attributes"] or {})
            for key, value in step.set.items():
                attributes[key] = (
                    env.from_string(value).render(values) if isinstance(value, str) else value
                )
            rows.append({"b_id": item.contact_id, "b_attributes": attributes, "b_now": now})
        session.execute(
            update(contacts_t)
            .where(contacts_t.c.id == bindparam("b_id"))
            .values(attributes=bindparam("b_attributes"), updated_at=bindparam("b_now")),
            rows,
        )

    def _webhook(self, step: s.WebhookStep, group: list[Item], now: datetime) -> None:
        import httpx

        for item in group:
            visit = item.visit(step.id)
            body = {
                **step.body,
                "journey": item.version.name,
                "step": step.id,
                "contact_id": item.contact_id,
                "trigger": item.context.get("trigger", {}),
            }
            headers = {**step.headers, "Idempotency-Key": f"{item.id}:{step.id}:{visit}"}
            try:
                response = httpx.request(
                    step.method, step.url, json=body, headers=headers, timeout=10.0
                )
                retry = response.status_code == 429 or response.status_code >= 500
                error = None if response.is_success else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                retry, error = True, f"{type(exc).__name__}: {exc}"
            attempts = item.context.setdefault("webhook_attempts", {})
            if retry and attempts.get(step.id, 0) < 5:
                attempts[step.id] = attempts.get(step.id, 0) + 1
                item.context["visits"][step.id] -= 1  # the same call, tried again
                item.park(now + timedelta(seconds=30 * 2 ** attempts[step.id]))
                continue
            attempts.pop(step.id, None)
            if error:
                item.context.setdefault("errors", []).append(f"{step.id}: {error}")
            item.go(item.version.after(step.id))

    # -- sends ---------------------------------------------------------------------------
    def _contacts(self, session: Session, items: Sequence[Item]) -> dict[int, dict[str, Any]]:
        ids = {i.contact_id for i in items}
        if not ids:
            return {}
        rows = session.execute(
            select(
                contacts_t.c.id,
                contacts_t.c.email,
                contacts_t.c.phone,
                contacts_t.c.timezone,
                contacts_t.c.locale,
                contacts_t.c.first_name,
                contacts_t.c.last_name,
                contacts_t.c.external_id,
                contacts_t.c.attributes,
            ).where(contacts_t.c.id.in_(ids))
        ).mappings()
        return {row["id"]: dict(row) for row in rows}

    def rules_for(self, journey: s.Journey) -> Rules:
        cap_max, cap_seconds = parse_cap(self.settings.frequency_cap)
        quiet_start, quiet_end = parse_quiet(self.settings.quiet_hours)
        cap = journey.settings.frequency_cap
        if cap is False:
            cap_max = None
        elif cap is not None:
            cap_max, cap_seconds = cap.max, cap.per
        quiet = journey.settings.quiet_hours
        if quiet is False:
            quiet_start = quiet_end = None
        elif quiet is not None:
            quiet_start, quiet_end = quiet.start, quiet.end
        return Rules(cap_max, cap_seconds, quiet_start, quiet_end, self.settings.default_timezone)

    def _send(
        self,
        session: Session,
        step: s.EmailStep | s.SmsStep,
        group: list[Item],
        now: datetime,
        messages: list[dict[str, Any]],
        stats: TickStats,
    ) -> None:
        version = group[0].version
        journey = version.journey
        purpose = step.purpose or (
            "transactional" if journey.settings.transactional else "marketing"
        )
        contacts = self._contacts(session, group)
        variants = self._assign(session, version, step, group, now)
        templates = {
            v.name: v.template
            for v in (step.experiment.variants if step.experiment else [])
            if v.template
        }
        candidates = []
        for item in group:
            if variants.get(item.id) == HOLDOUT:
                continue
            row = contacts[item.contact_id]
            address = row["email"] if step.type == "email" else row["phone"]
            candidates.append(
                Candidate(item.id, item.contact_id, step.type, purpose, address, row["timezone"])
            )
        pending: dict[int, int] = defaultdict(int)
        for m in messages:
            if m["purpose"] == "marketing" and m["status"] == MessageStatus.QUEUED.value:
                pending[m["contact_id"]] += 1
        decisions = gate(
            session=session,
            candidates=candidates,
            rules=self.rules_for(journey),
            now=now,
            pending=pending,
        )
        for item in group:
            decision = decisions.get(item.id)
            if decision is not None and decision.action == "defer":
                assert decision.until is not None
                item.park(decision.until)
                stats.deferred += 1
                stats.deferred_steps[step.id] += 1
                continue
            visit = item.visit(step.id)
            if decision is None:  # in the experiment's holdout: no message, counted there
                stats.held["holdout"] += 1
                item.go(item.version.after(step.id))
                continue
            row = contacts[item.contact_id]
            held = decision.action == "hold"
            if held:
                stats.held[str(decision.reason)] += 1
            messages.append(
                {
                    "idempotency_key": f"{version.id}:{item.id}:{step.id}:{visit}",
                    "contact_id": item.contact_id,
                    "journey_id": version.id,
                    "enrollment_id": item.id,
                    "step_id": step.id,
                    "variant": variants.get(item.id),
                    "channel": step.type,
                    "purpose": purpose,
                    "template": templates.get(variants.get(item.id) or "", step.template),
                    "to_address": (row["email"] if step.type == "email" else row["phone"]) or "",
                    "subject": None,
                    "status": MessageStatus.HELD.value if held else MessageStatus.QUEUED.value,
                    "error": decision.reason if held else None,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "meta": {"context": step.context} if step.context else {},
                }
            )
            item.go(item.version.after(step.id))

    def _assign(
        self,
        session: Session,
        version: Version,
        step: s.EmailStep | s.SmsStep,
        group: list[Item],
        now: datetime,
    ) -> dict[int, str]:
        experiment = step.experiment
        if experiment is None:
            return {}
        name = experiment.name or f"{version.name}.{step.id}"
        weights = [(v.name, v.weight) for v in experiment.variants]
        table: Table = Experiment.__table__  # type: ignore[assignment]
        _insert_ignore(
            session,
            table,
            [
                {
                    "name": name,
                    "journey_name": version.name,
                    "step_id": step.id,
                    "variants": {v.name: {"weight": v.weight} for v in experiment.variants},
                    "holdout_percent": experiment.holdout,
                    "status": "running",
                    "created_at": now,
                }
            ],
        )
        experiment_id = session.scalar(select(Experiment.id).where(Experiment.name == name))
        chosen = {
            i.id: variant_for(name, i.contact_id, weights, holdout=experiment.holdout)
            for i in group
        }
        _insert_ignore(
            session,
            assignments_t,
            [
                {
                    "experiment_id": experiment_id,
                    "contact_id": i.contact_id,
                    "variant": chosen[i.id],
                    "assigned_at": now,
                }
                for i in group
            ],
        )
        return chosen


def _matches(properties: Any, where: dict[str, Any]) -> bool:
    props = properties or {}
    return all(props.get(key) == value for key, value in where.items())


def _as_date(value: Any) -> date | None:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return value if isinstance(value, date) else None


def wake_waiting(
    session: Session, *, contact_id: int, event: str, versions: Iterable[Version], now: datetime
) -> int:
    """An event arrived: enrollments of this contact waiting for it are due now."""
    pairs = [
        (v.id, step.id)
        for v in versions
        for step in v.journey.steps
        if isinstance(step, s.WaitForEventStep) and step.event == event
    ]
    if not pairs:
        return 0
    result = session.execute(
        update(enrollments_t)
        .where(
            enrollments_t.c.contact_id == contact_id,
            enrollments_t.c.status == "active",
            and_(enrollments_t.c.next_due_at > now),
        )
        .where(
            (enrollments_t.c.journey_id.in_({v for v, _ in pairs}))
            & (enrollments_t.c.step_id.in_({st for _, st in pairs}))
        )
        .values(next_due_at=now)
    )
    return _rowcount(result)


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount or 0)


__all__ = ["Item", "JourneyEngine", "TickStats", "Version", "bucket", "json", "wake_waiting"]

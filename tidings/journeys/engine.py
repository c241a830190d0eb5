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

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    and_,
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

from tidings.config import Settings, get_settings
from tidings.crm.bulk import ANALYZE_FIRST, Statistics
from tidings.crm.db import insert_ignore, insert_rows, update_rows
from tidings.crm.models import (
    Enrollment,
    MessageStatus,
    SegmentMembership,
)
from tidings.crm.models import Journey as JourneyRow
from tidings.crm.types import utcnow
from tidings.errors import InputError
from tidings.journeys import schema as s
from tidings.journeys.goals import convert
from tidings.journeys.loader import version_hash
from tidings.journeys.state import (
    MAX_WAVES,
    Item,
    TickStats,
    Version,
    contacts_t,
    enrollments_t,
    messages_t,
)
from tidings.journeys.steps import StepRunner
from tidings.segments.inputs import Change
from tidings.segments.live import drain, forget, plan, record

if TYPE_CHECKING:
    from tidings.analytics.auto_winner import Settled

journeys_t: Table = JourneyRow.__table__  # type: ignore[assignment]


log = logging.getLogger(__name__)
IN_CALL_GRACE = timedelta(seconds=30)
"""How long a worker's tick leaves an enrollment alone that its caller advances in the same
call (a transactional event, an API trigger): no race for it, and a safety net after."""


class JourneyEngine(StepRunner):
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
        self._outbox: Statistics | None = None  # this process's writes into ``messages``

    # -- versions ------------------------------------------------------------------------
    def register(self, journey: s.Journey) -> Version:
        """Store this version of the journey (once per content hash); new entries use it."""
        digest = version_hash(journey)
        with Session(self.db) as session, session.begin():
            status = (
                session.scalar(
                    select(JourneyRow.status)
                    .where(JourneyRow.name == journey.name)
                    .order_by(JourneyRow.id.desc())
                    .limit(1)
                )
                or "active"
            )
            # several workers start at once and register the same files: the first one wins
            session.execute(
                insert_ignore(session, journeys_t).values(
                    name=journey.name,
                    version_hash=digest,
                    definition=journey.model_dump(mode="json"),
                    status=status,
                )
            )
            row = session.scalars(
                select(JourneyRow).where(
                    JourneyRow.name == journey.name, JourneyRow.version_hash == digest
                )
            ).one()
            version = Version(row.id, journey.name, digest, journey, row.status)
        self._versions[version.id] = version
        self._journeys_changed()
        return version

    def versions(self, name: str | None = None) -> list[Version]:
        """Every stored version of ``name`` (default: of every journey), oldest first.

        In-flight contacts keep the version they entered. Definitions are read (and validated)
        only for versions this engine has not seen yet; the status is always fresh.
        """
        query = select(
            JourneyRow.id, JourneyRow.name, JourneyRow.version_hash, JourneyRow.status
        ).order_by(JourneyRow.id)
        if name is not None:
            query = query.where(JourneyRow.name == name)
        with Session(self.db) as session:
            rows = session.execute(query).all()
            unseen = [row.id for row in rows if row.id not in self._versions]
            definitions = (
                {
                    vid: definition
                    for vid, definition in session.execute(
                        select(JourneyRow.id, JourneyRow.definition).where(
                            JourneyRow.id.in_(unseen)
                        )
                    )
                }
                if unseen
                else {}
            )
        found = []
        for vid, journey_name, digest, status in rows:
            cached = self._versions.get(vid)
            if cached is None or cached.status != status:
                journey = cached.journey if cached else s.Journey.model_validate(definitions[vid])
                cached = Version(vid, journey_name, digest, journey, status)
                self._versions[vid] = cached
            found.append(cached)
        return found

    def set_status(self, name: str, status: str) -> int:
        """Pause or resume every version of a journey; returns the versions touched."""
        with Session(self.db) as session, session.begin():
            result = session.execute(
                update(JourneyRow).where(JourneyRow.name == name).values(status=status)
            )
        self._journeys_changed()
        return _rowcount(result)

    def _journeys_changed(self) -> None:
        forget(self)  # this process's live plan is read again at once

    # -- enrollment ----------------------------------------------------------------------
    def _enroll(
        self,
        session: Session,
        version: Version,
        candidates: Any,
        *,
        now: datetime,
        context: dict[str, Any] | None = None,
        due: datetime | None = None,
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
            literal(due or now, type_=Enrollment.next_due_at.type),
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
        ids = [row[0] for row in session.execute(stmt)]
        if len(ids) >= ANALYZE_FIRST:
            # a broadcast enrols most of the table at once: without statistics PostgreSQL
            # plans the tick's claim for a handful of rows and sorts them all on every batch
            conn = session.connection()
            Statistics(conn, ["enrollments"]).wrote(conn, {"enrollments": len(ids)})
        return ids

    def paused(self, name: str) -> bool:
        """Whether journey ``name`` takes no one in and advances no one (read fresh)."""
        versions = self.versions(name)
        return not versions or versions[-1].status != "active"

    def enroll_segment(self, version: Version, *, now: datetime | None = None) -> int:
        """Enrol everyone who is in the trigger segment (each segment entry once); nobody
        while the journey is paused."""
        from tidings.segments.membership import refresh

        if self.paused(version.name):
            return 0
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
                from tidings.segments.membership import segment_statement, tune_for_segments

                tune_for_segments(session)
                ids = segment_statement(
                    segment, dialect=self.db.dialect.name, now=now, catalog=self._catalog()
                ).subquery()
                candidates = select(
                    ids.c.id.label("contact_id"),
                    literal(f"run:{now.isoformat(timespec='minutes')}").label("entry_key"),
                )
            return len(self._enroll(session, version, candidates, now=now))

    def enroll_select(
        self,
        version: Version,
        candidates: Any,
        *,
        now: datetime | None = None,
        session: Session | None = None,
    ) -> int:
        """Enrol the contacts a query selects (columns ``contact_id`` and ``entry_key``); in
        the caller's ``session`` (its transaction) when given: the caller has then read the
        journey's status itself (``versions()``), as a second transaction may not be opened
        while SQLite's write lock is held."""
        now = now or self.clock()
        if session is not None:
            return len(self._enroll(session, version, candidates, now=now))
        if self.paused(version.name):
            return 0
        with Session(self.db) as own, own.begin():
            return len(self._enroll(own, version, candidates, now=now))

    def enroll_contacts(
        self,
        version: Version,
        contact_ids: Iterable[int],
        *,
        entry_key: str,
        context: dict[str, Any] | None = None,
        now: datetime | None = None,
        in_call: bool = False,
    ) -> list[int]:
        """Enrol named contacts (API/CLI call, or the contact an event is about); returns
        the new enrollment ids (none for a contact the re-entry rule keeps out).

        ``in_call``: the caller advances them itself at once (``tick_batch(..., in_call=True)``);
        a worker's tick leaves them alone for ``IN_CALL_GRACE`` (and takes them over after it,
        should the caller die)."""
        if self.paused(version.name):
            return []
        now = now or self.clock()
        ids = sorted(set(contact_ids))
        if not ids:
            return []
        with Session(self.db) as session, session.begin():
            candidates = select(
                contacts_t.c.id.label("contact_id"), literal(entry_key).label("entry_key")
            ).where(contacts_t.c.id.in_(ids), contacts_t.c.erased_at.is_(None))
            due = now + IN_CALL_GRACE if in_call else None
            return self._enroll(session, version, candidates, now=now, context=context, due=due)

    def _catalog(self) -> Any:
        if self.catalog is None:
            from tidings.segments.loader import load_catalog

            self.catalog = load_catalog(self.settings.segments_dir, strict=False)
        return self.catalog

    # -- the tick ------------------------------------------------------------------------
    def tick(self, name: str, *, now: datetime | None = None, batch_size: int = 1000) -> TickStats:
        """Record the journey's conversions (which may end enrollments), then advance every
        due enrollment of journey ``name`` (all its versions)."""
        total = TickStats()
        versions = {v.id: v for v in self.versions(name) if v.status == "active"}
        if not versions:
            return total
        total.exited += self.convert(list(versions.values()), now=now or self.clock())[1]
        self.settle_experiments(list(versions.values()), now=now or self.clock())
        moved = False
        while True:
            stats = self.tick_batch(versions, now=now or self.clock(), batch_size=batch_size)
            total.add(stats)
            moved |= bool(stats.updated)
            if stats.processed < batch_size:
                if moved:  # update_contact steps queued changes: the live segments follow now
                    drain(self, now=now or self.clock())
                return total

    def settle_experiments(self, versions: list[Version], *, now: datetime) -> list[Settled]:
        """Take the auto-winner decisions that are due (analytics.auto_winner), each in its own
        transaction; the rest waiting for a winner is woken to receive it at this tick."""
        found: dict[str, tuple[s.Experiment, str]] = {}
        for version in versions:
            for step in version.journey.steps:
                experiment = getattr(step, "experiment", None)
                if experiment is not None and experiment.auto_winner is not None:
                    name = experiment.name or f"{version.name}.{step.id}"
                    found.setdefault(name, (experiment, step.id))
        if not found:
            return []
        # imported here: the statistics behind it take over a second to import, and most
        # journeys (and every transactional send) never settle an experiment
        from tidings.analytics.auto_winner import settle

        settled = []
        ids = [v.id for v in versions]
        for name, (experiment, step_id) in found.items():
            with Session(self.db) as session, session.begin():
                done = settle(
                    session.connection(),
                    name,
                    experiment,
                    journey_ids=ids,
                    step_id=step_id,
                    now=now,
                )
            if done is not None:
                log.info("experiment %s: %s %s (%s)", name, done.status, done.winner, done.reason)
                settled.append(done)
        return settled

    def convert(
        self, versions: list[Version], *, now: datetime, contact_id: int | None = None
    ) -> tuple[int, int]:
        """Conversions of ``versions`` up to ``now`` (journeys.goals), in one transaction:
        (converted, exited)."""
        with Session(self.db) as session, session.begin():
            return convert(session, versions, now=now, contact_id=contact_id)

    def tick_batch(
        self,
        versions: dict[int, Version],
        *,
        now: datetime,
        batch_size: int,
        only: Iterable[int] | None = None,
        in_call: bool = False,
        claim_token: str | None = None,
    ) -> TickStats:
        """One transaction: claim up to ``batch_size`` due enrollments (or just ``only``;
        ``in_call``: those enrolled ``in_call``, still inside their grace).

        With ``claim_token`` (a worker that renders and sends what it advances, ``running.work``)
        the messages it queues are written already claimed: ``in_flight`` under that token with
        a fresh lease and no ``handed_at``, exactly what ``Dispatcher.claim`` would make of them
        a moment later, without a second row version. Their ids are ``stats.claimed``; the
        caller holds the lease (``Pipeline.pump(claim=...)``). A crash before the hand-over
        leaves them as a crashed claim does: reconcile queues them again (docs/journeys.md)."""
        due_by = now + IN_CALL_GRACE if in_call else now
        stats = TickStats()
        live = plan(self)  # read before the transaction (SQLite: one writer, no second reader)
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
                    Enrollment.next_due_at <= due_by,
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
            stats.messages = sum(1 for m in messages if m["status"] == MessageStatus.QUEUED.value)
            if claim_token is None or not stats.messages:
                insert_rows(session, messages_t, messages)
            else:
                stats.claimed = self._insert_claimed(session, messages, claim_token)
            self._analyze_outbox(session, len(messages))
            update_rows(
                session,
                enrollments_t,
                [
                    {
                        "id": i.id,
                        "step_id": i.step_id,
                        "status": i.status,
                        "next_due_at": i.next_due_at,
                        "context": i.context,
                        "updated_at": now,
                        "exit_reason": i.exit_reason,
                        "exited_at": now if i.status != "active" else None,
                    }
                    for i in items
                ],
            )
            if stats.updated:  # attributes set by update_contact: queued for live segments
                changes = [
                    (cid, Change.contact(frozenset(keys), consents=False))
                    for cid, keys in stats.updated.items()
                ]
                record(session, live, changes, now=now)
        stats.completed = sum(1 for i in items if i.status == "completed")
        stats.exited = sum(1 for i in items if i.status == "exited")
        return stats

    def _analyze_outbox(self, session: Session, written: int) -> None:
        """ANALYZE ``messages`` as this process fills it (``crm.bulk.Statistics``: after the
        first 5,000 rows into a table never analysed, then whenever it doubled). Without
        statistics PostgreSQL took a fresh outbox for empty and planned the fenced hand-over
        through ``ix_messages_active``, reading every dead entry of the index on each batch
        (autovacuum's first ANALYZE comes a minute or more into a broadcast)."""
        if not written:
            return
        conn = session.connection()
        if self._outbox is None:
            self._outbox = Statistics(conn, ["messages"])
        self._outbox.wrote(conn, {"messages": written})

    def _insert_claimed(
        self, session: Session, messages: list[dict[str, Any]], token: str
    ) -> list[int]:
        """Insert the tick's messages, the queued ones as claimed by ``token``; the ids of
        those claimed (a message whose key already existed is not inserted, nor claimed)."""
        lease = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        queued = MessageStatus.QUEUED.value
        for m in messages:
            mine = m["status"] == queued
            m["status"] = MessageStatus.IN_FLIGHT.value if mine else m["status"]
            m["claim_token"] = token if mine else None
            m["lease_until"] = lease if mine else None
        rows = insert_rows(
            session, messages_t, messages, returning=(messages_t.c.id, messages_t.c.claim_token)
        )
        return sorted(mid for mid, owner in rows if owner is not None)


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


__all__ = ["Item", "JourneyEngine", "TickStats", "Version", "wake_waiting"]

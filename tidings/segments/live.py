"""Live segments: memberships that follow events, attributes, orders and consents within a second.

Two halves, joined by a queue table (``segment_changes``):

* **record** (the write path, cheap): a write that changes something about some contacts (an
  event posted, a contact upserted, an order, a consent, an ``update_contact`` step) calls
  ``record(session, plan(engine), changes)`` *inside its own transaction*: one row per contact whose
  change some live segment reads (``segments.inputs``), nothing otherwise. The change commits
  with the data or not at all.
* **drain** (the live loop): ``step`` deletes a batch of recorded rows (PostgreSQL: ``FOR
  UPDATE SKIP LOCKED``, so several loops share the queue), merges them per contact, and in the
  *same* transaction evaluates every affected live segment for those contacts (each segment's
  compiled statement restricted to them, still set-based) and brings their stays up to date
  (``membership.refresh_stays``): entries and exits recorded, the new stays enrolled into the
  segment-triggered journeys, enrollments waiting at a ``wait_for_segment`` step woken. A crash
  before the commit leaves the rows queued: each recorded change is evaluated exactly once.

The loop runs in processes that already run: a background thread of each web app process
(``Loop``; its own writes wake it at once, others' are polled every ``live_poll_seconds``),
the journey tick (``tick_all`` drains before its sweep), and the CLI commands that write (they
drain in the call). Segments are locked in name order (``membership.lock_segment``, which the
full refresh takes too), so any number of loops run side by side without losing, repeating or
deadlocking.

Changes are merged per contact within a batch: a contact who leaves and re-enters a segment
between two runs of the loop (well under a second apart under load) is not seen to have left.

A segment is live when an active journey is triggered by it or waits for it, or its YAML says
``live: true``. Which segments are live (``plan``) is read from the journeys at most every
``live_plan_seconds`` per process (and at once after a journey is registered or paused there,
and at every tick): a journey activated in another process makes its segments live within that
bound; changes written meanwhile are caught by the tick's sweep. What the live path cannot see
is left to ``sweep`` (run at every journey tick): the passing of time (``within``,
``older_than``), engagement, suppressions, scores, other segments' memberships, and any rule
it does not know. ``sweep`` is a full refresh of every live segment; for a segment the live
path keeps exact (``Inputs.swept`` empty), anything the full refresh changes for a contact with
no change still queued is something the live path missed, and is reported as such.

>>> current = plan(runtime.engine)                                 # doctest: +SKIP
>>> with Session(db) as session, session.begin():                 # doctest: +SKIP
...     record(session, current, [(7, Change.event("cart.updated"))])
>>> drain(runtime.engine)                                          # doctest: +SKIP
LiveStats(changes=1, segments=1, entered=1, exited=0, enrolled=1, woken=0)
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    String,
    Table,
    any_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session

from tidings.crm.models import Enrollment, SegmentChange, SegmentMembership
from tidings.crm.types import utcnow
from tidings.segments.inputs import Change, Inputs, inputs
from tidings.segments.loader import Catalog
from tidings.segments.membership import lock_segment, lock_segments, refresh_stays

if TYPE_CHECKING:
    from tidings.journeys.engine import JourneyEngine

log = logging.getLogger("tidings.segments")
CHUNK = 1000  # SQLite: contacts per restricted evaluation (bound parameters stay few)
changes_t: Table = SegmentChange.__table__  # type: ignore[assignment]
BACKLOG_FACTOR = 4  # behind a backlog a step takes up to this many times the batch (drain)
LOOP_LOCK = "*live loop*"  # not a segment name (names are identifiers): the loops' turn


@dataclass
class LiveStats:
    changes: int = 0
    """Recorded changes taken from the queue (``drain``)."""
    segments: int = 0
    entered: int = 0
    exited: int = 0
    enrolled: int = 0
    woken: int = 0

    def add(self, other: LiveStats) -> None:
        self.changes += other.changes
        self.segments += other.segments
        self.entered += other.entered
        self.exited += other.exited
        self.enrolled += other.enrolled
        self.woken += other.woken


@dataclass
class Plan:
    """The live segments of the active journeys and the catalog, and what each reads."""

    inputs: dict[str, Inputs] = field(default_factory=dict)
    triggers: dict[str, list[Any]] = field(default_factory=dict)
    """segment -> the newest active versions it triggers"""
    waits: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """segment -> (journey version id, step id) of every wait_for_segment on it"""
    _affected: dict[Change, list[str]] = field(default_factory=dict, repr=False)

    def affected(self, change: Change) -> list[str]:
        found = self._affected.get(change)
        if found is None:
            found = sorted(name for name, got in self.inputs.items() if got.affected_by(change))
            if len(self._affected) > 4096:
                self._affected.clear()
            self._affected[change] = found
        return found


def live_names(catalog: Catalog, versions: Iterable[Any]) -> set[str]:
    """Segments kept live: ``live: true`` in the YAML, or named by an active journey's
    segment trigger or ``wait_for_segment`` step."""
    from tidings.journeys import schema as s

    names = {name for name, seg in catalog.segments.items() if getattr(seg, "live", False)}
    for version in versions:
        if version.status != "active":
            continue
        trigger = version.journey.trigger
        if isinstance(trigger, s.SegmentTrigger):
            names.add(trigger.segment)
        for step in version.journey.steps:
            if isinstance(step, s.WaitForSegmentStep):
                names.add(step.segment)
    return {name for name in names if name in catalog.segments}


_plans: dict[tuple[int, tuple[tuple[int, str], ...]], Plan] = {}
_recent: weakref.WeakKeyDictionary[Any, tuple[float, int, Plan]] = weakref.WeakKeyDictionary()


def forget(engine: JourneyEngine) -> None:
    """The engine's journeys changed (registered, paused, resumed): read them at the next
    ``plan``."""
    _recent.pop(engine, None)


def plan(engine: JourneyEngine, *, fresh: bool = False) -> Plan:
    """The live plan of the engine's journeys: reused for ``live_plan_seconds`` (no query on
    the hot path), then read again (``fresh``: now), and cached per set of versions."""
    from tidings.journeys import schema as s
    from tidings.journeys.triggers import newest_active

    clock = time.monotonic()
    catalog = engine._catalog()
    held = _recent.get(engine)
    if (
        not fresh
        and held is not None
        and held[1] == id(catalog)
        and clock - held[0] < engine.settings.live_plan_seconds
    ):
        return held[2]
    every = engine.versions()
    key = (id(catalog), tuple((v.id, v.status) for v in every))
    found = _plans.get(key)
    if found is None:
        found = Plan()
        for name in sorted(live_names(catalog, every)):
            try:
                found.inputs[name] = inputs(catalog.core(name))
            except Exception as exc:  # a segment that does not compile is refreshed in full only
                log.warning("segment %s is not live: %s", name, exc)
        for version in newest_active(every):
            trigger = version.journey.trigger
            if isinstance(trigger, s.SegmentTrigger):
                found.triggers.setdefault(trigger.segment, []).append(version)
        for version in every:
            if version.status != "active":
                continue
            for step in version.journey.steps:
                if isinstance(step, s.WaitForSegmentStep):
                    found.waits.setdefault(step.segment, []).append((version.id, step.id))
        if len(_plans) > 32:
            _plans.clear()
        _plans[key] = found
    _recent[engine] = (clock, id(catalog), found)
    return found


# -- the write path: record ---------------------------------------------------------------------


def encode(change: Change) -> dict[str, Any]:
    def names(value: frozenset[str] | None) -> list[str] | None:
        return None if value is None else sorted(value)

    return {
        "events": names(change.events),
        "attributes": names(change.attributes),
        "orders": change.orders,
        "consents": change.consents,
    }


def decode(value: dict[str, Any]) -> Change:
    def names(got: list[str] | None) -> frozenset[str] | None:
        return None if got is None else frozenset(got)

    return Change(
        events=names(value.get("events")),
        attributes=names(value.get("attributes")),
        orders=bool(value.get("orders")),
        consents=bool(value.get("consents")),
    )


def merged(changes: Iterable[tuple[int, Change]]) -> dict[int, Change]:
    """One change per contact: the union of its changes."""
    out: dict[int, Change] = {}
    for cid, change in changes:
        had = out.get(cid)
        out[cid] = change if had is None else had.merge(change)
    return out


def record(
    session: Any,
    current: Plan,
    changes: Iterable[tuple[int, Change]],
    *,
    now: datetime | None = None,
) -> int:
    """Queue the changes some live segment reads, in the caller's transaction (``session``: a
    Session or Connection inside ``begin()``); one row per contact. Returns how many.
    ``current``: ``plan(engine)``, taken *before* the transaction began (on SQLite a second
    connection cannot read while the caller's holds the write lock)."""
    if not current.inputs:
        return 0
    rows = [
        {"contact_id": cid, "change": encode(change), "recorded_at": now or utcnow()}
        for cid, change in merged(c for c in changes if current.affected(c[1])).items()
    ]
    if rows:
        session.execute(insert(changes_t), rows)
    return len(rows)


def record_apart(
    engine: JourneyEngine, contact_ids: Iterable[int], change: Change, *, chunk: int = 5000
) -> int:
    """Queue the same change for many contacts, ``chunk`` to a transaction of its own: for a
    write that committed in batches of its own (a file import). A crash between that write and
    this leaves the change to the tick's full refresh. Returns how many were queued."""
    current = plan(engine)
    if not current.affected(change):
        return 0
    total = 0
    for part in _chunks(sorted(contact_ids), chunk):
        with Session(engine.db) as session, session.begin():
            total += record(session, current, [(cid, change) for cid in part])
    return total


# -- the live loop: drain -----------------------------------------------------------------------


def claim(session: Session, limit: int) -> list[tuple[Change, list[int]]]:
    """Delete up to ``limit`` queued changes, oldest first, in the session's transaction
    (PostgreSQL: rows another loop holds are skipped); they come back if it rolls back.
    Returns each distinct change with the contacts it was recorded for (PostgreSQL groups
    them in the statement: a few rows, not one per change)."""
    t = changes_t
    pick = select(t.c.id).order_by(t.c.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    taken = delete(t).where(t.c.id.in_(pick.scalar_subquery()))
    if session.get_bind().dialect.name == "postgresql":
        rows = taken.returning(t.c.contact_id, t.c.change).cte("gone")
        key = cast(rows.c.change, JSONB)
        grouped = select(key, func.array_agg(rows.c.contact_id)).group_by(key)
        return [(decode(change), [int(c) for c in ids]) for change, ids in session.execute(grouped)]
    by_change: dict[str, tuple[Change, list[int]]] = {}
    for cid, change in session.execute(taken.returning(t.c.contact_id, t.c.change)):
        key_text = repr(sorted(change.items()))
        if key_text not in by_change:
            by_change[key_text] = (decode(change), [])
        by_change[key_text][1].append(int(cid))
    return list(by_change.values())


def step(
    engine: JourneyEngine, *, limit: int | None = None, now: datetime | None = None
) -> LiveStats:
    """Take one batch of queued changes and evaluate them, all in one transaction.

    Loops take turns (a lock of their own, first): a loop that waited then takes everything
    queued meanwhile in one batch, instead of splitting the queue with the other and waiting
    for the segments' locks while holding its part."""
    limit = limit or engine.settings.live_batch
    current = plan(engine)
    with Session(engine.db) as session, session.begin():
        lock_segment(session, LOOP_LOCK)
        claimed = claim(session, limit)
        stats = _evaluate(engine, session, current, claimed, now=now or utcnow())
        stats.changes = sum(len(ids) for _, ids in claimed)
    return stats


def drain(
    engine: JourneyEngine, *, limit: int | None = None, now: datetime | None = None
) -> LiveStats:
    """Evaluate queued changes until the queue is empty (as far as this loop can see).

    Behind a backlog (a step took a full batch) each next step takes twice as many, up to
    ``BACKLOG_FACTOR`` times ``limit``: a larger batch costs less per change (the fixed
    work of a step: the locks, the claim, one statement per segment; at 1,000,000 contacts a
    step of 20,000 changes took 2.5 times less client CPU per change than one of 5,000) and
    the backlog, not the batch, is then what the latest change waits for. Back to ``limit``
    once a step finds less than a full batch."""
    limit = limit or engine.settings.live_batch
    total = LiveStats()
    size = limit
    while True:
        got = step(engine, limit=size, now=now)
        total.add(got)
        if got.changes < size:
            return total
        size = min(size * 2, limit * BACKLOG_FACTOR)


def pending(db: Any) -> int:
    """How many recorded changes wait for the loop."""
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(changes_t)).scalar_one())


def queued(db: Any) -> bool:
    """Whether any recorded change waits for the loop (one index probe)."""
    with db.connect() as conn:
        return conn.execute(select(changes_t.c.id).limit(1)).first() is not None


class Loop:
    """The live loop in a background thread: drains whenever ``nudge``d (this process wrote)
    and every ``live_poll_seconds`` (other processes wrote); after a drain that took
    something it looks again at once (what was queued meanwhile waits for no poll). Started
    by ``start`` (the web app's lifespan, ``tidings live``: runs until ``stop``) or by the
    first ``nudge`` (then it ends once the queue is empty and nothing nudged it for a poll
    interval)."""

    def __init__(self, engine: Callable[[], JourneyEngine], *, db: Any, poll: float) -> None:
        self._engine = engine
        self.db = db
        self.poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._persistent = False

    def start(self) -> None:
        with self._lock:
            self._persistent = True
            self._stop.clear()
            self._spawn()

    def nudge(self) -> None:
        with self._lock:
            self._wake.set()
            self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._persistent = False
            self._stop.set()
            self._wake.set()
            thread = self._thread
        if thread is not None:
            thread.join(30)

    def _spawn(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="live-segments", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            took = 0
            try:
                if queued(self.db):  # the engine (the runtime) is built on first need
                    took = drain(self._engine()).changes
            except Exception:  # the store may be away for a moment: the rows stay queued
                log.exception("live segments: the loop failed; retrying")
            if took:  # busy: what was queued during the last step is taken now, not at a poll
                continue
            self._wake.wait(self.poll)
            with self._lock:  # a nudge is seen under the lock: none is lost as this one ends
                if not self._wake.is_set() and not self._persistent:
                    self._thread = None
                    return


def update(
    engine: JourneyEngine,
    contact_ids: Iterable[int],
    change: Change,
    *,
    now: datetime | None = None,
) -> LiveStats:
    """Evaluate ``change`` for these contacts now, in the caller's process and in one
    transaction, bypassing the queue (the simulator and tests; writers ``record`` instead)."""
    ids = list(contact_ids)
    if not ids:
        return LiveStats()
    current = plan(engine)
    with Session(engine.db) as session, session.begin():
        return _evaluate(engine, session, current, [(change, ids)], now=now or utcnow())


def _evaluate(
    engine: JourneyEngine,
    session: Session,
    current: Plan,
    changes: list[tuple[Change, list[int]]],
    *,
    now: datetime,
) -> LiveStats:
    """Each live segment the changes can affect, evaluated once for the contacts whose change
    it reads (``changes``: each distinct change with its contacts; a segment a contact's
    merged change affects is one some change of it affects, so no merge per contact is
    needed). The segments' locks are taken first, in name order (the order every loop takes
    them in), in one round trip."""
    stats = LiveStats()
    wanted: dict[str, set[int]] = {}
    for change, ids in changes:
        for name in current.affected(change):
            wanted.setdefault(name, set()).update(ids)
    if not wanted:
        return stats
    catalog = engine._catalog()
    names = sorted(wanted)
    lock_segments(session, names)
    postgres = session.get_bind().dialect.name == "postgresql"
    for name in names:
        stats.segments += 1
        # PostgreSQL: one statement per segment however many contacts (an array parameter);
        # SQLite: chunks, as its bound parameters are few
        for chunk in _chunks(sorted(wanted[name]), len(wanted[name]) if postgres else CHUNK):
            stats.add(_apply(engine, session, current, catalog, name, chunk, now))
    return stats


def _apply(
    engine: JourneyEngine,
    session: Session,
    current: Plan,
    catalog: Catalog,
    name: str,
    ids: list[int],
    now: datetime,
) -> LiveStats:
    stats = LiveStats()
    postgres = session.get_bind().dialect.name == "postgresql"
    stays = refresh_stays(
        name,
        session=session,
        catalog=catalog,
        now=now,
        contact_ids=ids,
        locked=True,
    )
    stats.entered, stats.exited = stays.entered, stays.exited
    if stays.new:
        m = SegmentMembership
        new_ids = [stay for stay, _ in stays.new]
        chosen: Any = (
            m.id == any_(bindparam("stays", new_ids, type_=ARRAY(BigInteger)))
            if postgres
            else m.id.in_(new_ids)
        )
        candidates = select(
            m.contact_id.label("contact_id"),
            (literal("m:") + cast(m.id, String)).label("entry_key"),
        ).where(chosen)
        for version in current.triggers.get(name, []):
            stats.enrolled += engine.enroll_select(version, candidates, now=now, session=session)
    moved = [cid for _, cid in stays.new] + stays.left
    if moved and current.waits.get(name):
        stats.woken = wake_segment_waits(session, current.waits[name], moved, now=now)
    return stats


def wake_segment_waits(
    session: Session, waits: list[tuple[int, str]], contact_ids: Any, *, now: datetime
) -> int:
    """Enrollments of these contacts parked at a ``wait_for_segment`` on the segment are due
    now (the step itself reads the membership and decides)."""
    e: Table = Enrollment.__table__  # type: ignore[assignment]
    total = 0
    for version_id, step_id in waits:
        result: Any = session.execute(
            sql_update(e)
            .where(
                e.c.journey_id == version_id,
                e.c.step_id == step_id,
                e.c.status == "active",
                e.c.next_due_at > now,
                e.c.contact_id.in_(contact_ids),
            )
            .values(next_due_at=now)
        )
        total += int(result.rowcount or 0)
    return total


@dataclass
class SweepResult:
    segment: str
    entered: int
    exited: int
    swept: list[str]
    """Why the segment needs the sweep; empty: a change here is one the live path missed."""
    pending: int = 0
    """Of the contacts moved, those with a change still queued (the loop had not come yet)."""

    @property
    def missed(self) -> int:
        return 0 if self.swept else self.entered + self.exited - self.pending


def sweep(engine: JourneyEngine, *, now: datetime | None = None) -> list[SweepResult]:
    """Drain the queue, then a full refresh of every live segment: the time-window sweep and
    the live path's check.

    Entries found here are enrolled by the journeys' own tick (``enroll_segment`` takes every
    open stay); a change in a segment the live path keeps exact, for a contact with no change
    queued, is logged as missed."""
    current = plan(engine, fresh=True)
    drain(engine)
    now = now or utcnow()
    catalog = engine._catalog()
    results = []
    m = SegmentMembership
    for name, got in current.inputs.items():
        queued = 0
        with Session(engine.db) as session, session.begin():
            stays = refresh_stays(name, session=session, catalog=catalog, now=now)
            moved = select(m.contact_id).where(
                m.segment == name, (m.entered_at == now) | (m.exited_at == now)
            )
            if stays.entered + stays.exited and current.waits.get(name):
                wake_segment_waits(session, current.waits[name], moved, now=now)
            if stays.entered + stays.exited and not got.swept:
                waiting = exists(select(literal(1)).where(changes_t.c.contact_id == m.contact_id))
                queued = int(
                    session.scalar(
                        select(func.count()).select_from(moved.where(waiting).subquery())
                    )
                    or 0
                )
        result = SweepResult(name, stays.entered, stays.exited, got.swept, queued)
        if result.missed:
            log.warning(
                "live segment %s: the full refresh found %d entries and %d exits the live "
                "path missed",
                name,
                stays.entered,
                stays.exited,
                extra={"kind": "segment_missed", "count": result.missed},
            )
        results.append(result)
    return results


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

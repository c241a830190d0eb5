"""Live segments: memberships that follow events, attributes, orders and consents at once.

A write path that changes something about some contacts (an event posted, a contact upserted,
an order, a consent, an ``update_contact`` step) calls ``update(engine, contact_ids, change)``
after its commit (``engine``: the ``JourneyEngine``). For each *live* segment whose rule reads
what changed (``segments.inputs``), the segment's compiled statement is evaluated for those
contacts only (still one set-based statement) and their stays are brought up to date
(``membership.refresh_stays``): entries and exits are recorded as they happen, the new stays
are enrolled into the segment-triggered journeys in the same transaction, and enrollments
waiting at a ``wait_for_segment`` step on the segment are woken.

Each segment's change runs in its own transaction under the segment's lock
(``membership.lock_segment``), which the tick's full refresh takes too: any number of workers
may run it side by side without losing or repeating an entry or exit.

A segment is live when an active journey is triggered by it or waits for it, or its YAML says
``live: true``. What the live path cannot see is left to ``sweep`` (run at every journey tick):
the passing of time (``within``, ``older_than``), engagement, suppressions, scores, other
segments' memberships, and any rule it does not know. ``sweep`` is a full refresh of every live
segment; for a segment the live path keeps exact (``Inputs.swept`` empty), anything the full
refresh changes is something the live path missed, and is reported as such.

>>> update(runtime.engine, [7], Change.event("cart.updated"))        # doctest: +SKIP
LiveStats(segments=1, entered=1, exited=0, enrolled=1, woken=0)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, Table, cast, literal, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from tidings.crm.models import Enrollment, SegmentMembership
from tidings.crm.types import utcnow
from tidings.segments.inputs import Change, Inputs, inputs
from tidings.segments.loader import Catalog
from tidings.segments.membership import refresh_stays

if TYPE_CHECKING:
    from tidings.journeys.engine import JourneyEngine

log = logging.getLogger("tidings.segments")
CHUNK = 1000  # contacts per restricted evaluation (bound parameters stay few)


@dataclass
class LiveStats:
    segments: int = 0
    entered: int = 0
    exited: int = 0
    enrolled: int = 0
    woken: int = 0

    def add(self, other: LiveStats) -> None:
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

    def affected(self, change: Change) -> list[str]:
        return sorted(name for name, got in self.inputs.items() if got.affected_by(change))


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


def plan(engine: JourneyEngine) -> Plan:
    """The live plan of the engine's journeys (cached per set of versions and statuses)."""
    from tidings.journeys import schema as s
    from tidings.journeys.triggers import newest_active

    catalog = engine._catalog()
    every = engine.versions()
    key = (id(catalog), tuple((v.id, v.status) for v in every))
    found = _plans.get(key)
    if found is not None:
        return found
    result = Plan()
    for name in sorted(live_names(catalog, every)):
        try:
            result.inputs[name] = inputs(catalog.core(name))
        except Exception as exc:  # a segment that does not compile is refreshed in full only
            log.warning("segment %s is not live: %s", name, exc)
    for version in newest_active(every):
        trigger = version.journey.trigger
        if isinstance(trigger, s.SegmentTrigger):
            result.triggers.setdefault(trigger.segment, []).append(version)
    for version in every:
        if version.status != "active":
            continue
        for step in version.journey.steps:
            if isinstance(step, s.WaitForSegmentStep):
                result.waits.setdefault(step.segment, []).append((version.id, step.id))
    if len(_plans) > 32:
        _plans.clear()
    _plans[key] = result
    return result


def update(
    engine: JourneyEngine,
    contact_ids: Iterable[int],
    change: Change,
    *,
    now: datetime | None = None,
) -> LiveStats:
    """Bring the live segments ``change`` can affect up to date for these contacts."""
    return update_many(engine, [(cid, change) for cid in contact_ids], now=now)


def update_many(
    engine: JourneyEngine, changes: Iterable[tuple[int, Change]], *, now: datetime | None = None
) -> LiveStats:
    """``update`` for a batch of (contact, what changed for it): each live segment is
    evaluated once, for the contacts whose change it reads."""
    stats = LiveStats()
    changes = list(changes)
    if not changes:
        return stats
    current = plan(engine)
    by_change: dict[Change, set[int]] = {}
    for cid, change in changes:
        by_change.setdefault(change, set()).add(cid)
    wanted: dict[str, set[int]] = {}
    for change, ids in by_change.items():
        for name in current.affected(change):
            wanted.setdefault(name, set()).update(ids)
    if not wanted:
        return stats
    now = now or utcnow()
    catalog = engine._catalog()
    for name in sorted(wanted):
        stats.segments += 1
        for chunk in _chunks(sorted(wanted[name]), CHUNK):
            stats.add(_apply(engine, current, catalog, name, chunk, now))
    return stats


def _apply(
    engine: JourneyEngine, current: Plan, catalog: Catalog, name: str, ids: list[int], now: datetime
) -> LiveStats:
    stats = LiveStats()
    with Session(engine.db) as session, session.begin():
        stays = refresh_stays(name, session=session, catalog=catalog, now=now, contact_ids=ids)
        stats.entered, stats.exited = stays.entered, stays.exited
        if stays.new:
            m = SegmentMembership
            candidates = select(
                m.contact_id.label("contact_id"),
                (literal("m:") + cast(m.id, String)).label("entry_key"),
            ).where(m.id.in_([stay for stay, _ in stays.new]))
            for version in current.triggers.get(name, []):
                stats.enrolled += engine.enroll_select(
                    version, candidates, now=now, session=session
                )
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

    @property
    def missed(self) -> int:
        return 0 if self.swept else self.entered + self.exited


def sweep(engine: JourneyEngine, *, now: datetime | None = None) -> list[SweepResult]:
    """Full refresh of every live segment: the time-window sweep and the live path's check.

    Entries found here are enrolled by the journeys' own tick (``enroll_segment`` takes every
    open stay); a change in a segment the live path keeps exact is logged as missed."""
    now = now or utcnow()
    current = plan(engine)
    catalog = engine._catalog()
    results = []
    for name, got in current.inputs.items():
        with Session(engine.db) as session, session.begin():
            stays = refresh_stays(name, session=session, catalog=catalog, now=now)
            if stays.entered + stays.exited and current.waits.get(name):
                m = SegmentMembership
                moved = select(m.contact_id).where(
                    m.segment == name, (m.entered_at == now) | (m.exited_at == now)
                )
                wake_segment_waits(session, current.waits[name], moved, now=now)
        result = SweepResult(name, stays.entered, stays.exited, got.swept)
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

"""``tidings journey plan``: a dry run of a journey against the current CRM data.

The real engine runs inside one database transaction that is rolled back at the end, so the
plan and a real run cannot disagree about who enters, which branch they take, or which policy
holds them back. Time is simulated: after enrolling now, the engine ticks at each next due time
(waits, quiet hours) up to ``horizon``; no event arrives in a plan, so waits for events time
out. Nothing is written and nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidings.crm.models import Enrollment, Event, Message
from tidings.crm.types import utcnow
from tidings.journeys import schema as s
from tidings.journeys.engine import JourneyEngine
from tidings.journeys.loader import load_file
from tidings.journeys.runtime import Runtime


@dataclass
class StepPlan:
    step: str
    type: str
    sent: int = 0
    held: dict[str, int] = field(default_factory=dict)
    deferred: int = 0
    waiting: int = 0
    first: datetime | None = None
    last: datetime | None = None


@dataclass
class Plan:
    name: str
    entering: int
    steps: list[StepPlan]
    notes: list[str]


def plan_journey(
    runtime: Runtime,
    file: Path,
    *,
    now: datetime | None = None,
    horizon: timedelta = timedelta(days=60),
    max_ticks: int = 500,
) -> Plan:
    now = now or utcnow()
    journey = load_file(file, references=runtime.references())
    notes: list[str] = []
    with runtime.db.connect() as conn:
        outer = conn.begin()
        engine = JourneyEngine(
            db=conn,
            settings=runtime.settings,
            catalog=runtime.engine.catalog,
        )
        version = engine.register(journey)
        with Session(conn) as session:  # what a real run already sent is not part of the plan
            before = session.scalar(select(func.max(Message.id))) or 0
        trigger = journey.trigger
        if isinstance(trigger, s.SegmentTrigger | s.ScheduleTrigger):
            entering = engine.enroll_segment(version, now=now)
        elif isinstance(trigger, s.EventTrigger):
            since = now - timedelta(days=30)
            with Session(conn) as session:
                ids = set(
                    session.scalars(
                        select(Event.contact_id).where(
                            Event.name == trigger.event, Event.occurred_at >= since
                        )
                    )
                )
            entering = len(engine.enroll_contacts(version, ids, entry_key="plan", now=now))
            notes.append(
                f"enters on event {trigger.event!r}: planned with the {len(ids)} "
                "contacts who had it in the last 30 days"
            )
        else:
            entering = 0
            notes.append("enters by API or CLI call: nobody enters by itself")
        stats: dict[str, StepPlan] = {
            step.id: StepPlan(step.id, step.type) for step in journey.steps
        }
        clock, ticks = now, 0
        awaiting: dict[str, int] = {}
        while clock <= now + horizon and ticks < max_ticks:
            result = engine.tick(journey.name, now=clock)
            for step_id, n in result.deferred_steps.items():
                stats[step_id].deferred += n
            for (step_id, reason), n in result.held_out_steps.items():
                stats[step_id].held[reason] = stats[step_id].held.get(reason, 0) + n
            for step_id, n in result.awaiting_winner.items():
                awaiting[step_id] = max(awaiting.get(step_id, 0), n)
            ticks += 1
            with Session(conn) as session:
                due = session.scalar(
                    select(func.min(Enrollment.next_due_at)).where(
                        Enrollment.journey_id == version.id, Enrollment.status == "active"
                    )
                )
            if due is None:
                break
            clock = max(due, clock + timedelta(seconds=1))
        with Session(conn) as session:
            for message_step, status, error, n, first, last in session.execute(
                select(
                    Message.step_id,
                    Message.status,
                    Message.error,
                    func.count(),
                    func.min(Message.created_at),
                    func.max(Message.created_at),
                )
                .where(Message.journey_id == version.id, Message.id > before)
                .group_by(Message.step_id, Message.status, Message.error)
            ):
                row = stats[str(message_step)]
                if status == "held":
                    reason = error or "unknown"
                    row.held[reason] = row.held.get(reason, 0) + n
                else:
                    row.sent += n
                    row.first = min(filter(None, [row.first, first]), default=None)
                    row.last = max(filter(None, [row.last, last]), default=None)
            for waiting_step, n in session.execute(
                select(Enrollment.step_id, func.count())
                .where(Enrollment.journey_id == version.id, Enrollment.status == "active")
                .group_by(Enrollment.step_id)
            ):
                stats[str(waiting_step)].waiting += n
        outer.rollback()
    for row in stats.values():
        if row.sent and row.first and row.last:
            notes.append(
                f"{row.step}: {row.sent} {row.type} from "
                f"{row.first:%Y-%m-%d %H:%M} to {row.last:%Y-%m-%d %H:%M} UTC"
            )
    for step_id, n in awaiting.items():
        notes.append(
            f"{step_id}: auto-winner: {n} waited for the decision; a plan has no opens, "
            "clicks or orders, so it shows the rest sent by the fallback rule"
        )
    if clock > now + horizon:
        notes.append(
            f"simulated {horizon.days} days; contacts still in the journey then are "
            "counted as waiting"
        )
    return Plan(journey.name, entering, list(stats.values()), notes)

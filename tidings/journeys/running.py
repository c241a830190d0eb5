"""Run journeys now: one journey end to end, a tick over all, and what ops watch (status).

These are the plain functions the CLI and the Prefect flows (``flows/journeys.py``) call.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tidings.crm.models import Assignment, Contact, Enrollment, Experiment, Message
from tidings.crm.models import Journey as JourneyRow
from tidings.crm.types import utcnow
from tidings.errors import InputError
from tidings.journeys import schema as s
from tidings.journeys.dispatch import Claim, DispatchStats
from tidings.journeys.engine import TickStats, Version
from tidings.journeys.failures import failure_report
from tidings.journeys.runtime import Runtime
from tidings.journeys.triggers import run_schedules


def summary(
    name: str,
    stats: TickStats,
    sent: Any = None,
    enrolled: int = 0,
    *,
    paused: bool = False,
    failures: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What a run did; ``failures``: each reason a message was not sent (``failure_report``)."""
    result: dict[str, Any] = {
        "journey": name,
        "paused": paused,
        "enrolled": enrolled,
        "processed": stats.processed,
        "messages": stats.messages,
        "deferred": stats.deferred,
        "completed": stats.completed,
        "exited": stats.exited,
        "held": dict(stats.held),
    }
    if sent is not None:
        # render failures are among ``failed`` (one result each, reason "render: ...")
        result.update(sent=sent.sent, failed=sent.failed, retry=sent.retry)
    result["failures"] = failures or []
    return result


def enroll(runtime: Runtime, version: Version, *, now: datetime) -> int:
    """Enrol what the trigger says can be enrolled now (segment and schedule triggers)."""
    trigger = version.journey.trigger
    if isinstance(trigger, s.SegmentTrigger):
        return runtime.engine.enroll_segment(version, now=now)
    if isinstance(trigger, s.ScheduleTrigger):
        return run_schedules(runtime, now=now).get(version.name, 0)
    return 0  # events and API calls enrol as they arrive


def run_once(
    runtime: Runtime, file: Path, *, progress: Console | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Register ``file``, enrol, advance what is due and send it; a summary of what happened."""
    now = now or utcnow()
    version = runtime.load(file)
    if runtime.engine.paused(version.name):
        return summary(version.name, TickStats(), paused=True)
    enrolled = enroll(runtime, version, now=now)
    versions = {v.id: v for v in runtime.engine.versions(version.name) if v.status == "active"}
    total = TickStats()
    with Session(runtime.db) as session:
        due = (
            session.scalar(
                select(func.count())
                .select_from(Enrollment)
                .where(
                    Enrollment.journey_id.in_(versions),
                    Enrollment.status == "active",
                    Enrollment.next_due_at <= now,
                )
            )
            or 0
        )
    with Progress(console=progress or Console(), transient=True) as bar:
        task = bar.add_task(f"{version.name}: advancing", total=due or 1)
        while versions:
            stats = runtime.engine.tick_batch(versions, now=now, batch_size=1000)
            total.add(stats)
            bar.advance(task, stats.processed)
            if stats.processed < 1000:
                break
        bar.update(task, description=f"{version.name}: sending")
        sent = runtime.dispatcher.dispatch(now=now, journey_ids=set(versions))
    return summary(version.name, total, sent, enrolled, failures=failure_report(runtime.db, sent))


def tick_all(
    runtime: Runtime, *, names: list[str] | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The scheduled tick: run due schedules, advance every active journey, send."""
    from tidings.journeys.reconcile import reconcile
    from tidings.segments.rules import parse_duration

    now = now or utcnow()
    reconcile(
        runtime,
        older_than=timedelta(seconds=parse_duration(runtime.settings.reconcile_after)),
        now=now,
    )
    from tidings.segments.live import sweep

    sweep(runtime.engine, now=now)  # live segments: time windows, and the check of the live path
    scheduled = run_schedules(runtime, now=now)
    from tidings.crm.optin import queued_confirmations

    with runtime.db.connect() as conn:
        confirmations = queued_confirmations(conn, now=now)
    if confirmations:  # double opt-in emails not sent when they were asked for
        runtime.dispatcher.dispatch(now=now, only=confirmations)
    with Session(runtime.db) as session:
        known = list(session.scalars(select(JourneyRow.name).distinct().order_by(JourneyRow.name)))
    results = []
    for name in names or known:
        versions = runtime.engine.versions(name)
        if not versions:
            raise InputError(
                f"no journey named {name!r} is registered",
                hint="run `tidings journey run FILE` or `tidings journey tick`",
            )
        enrolled = scheduled.get(name, 0)
        latest = versions[-1]
        if latest.status != "active":  # paused: nothing enters, moves or is sent
            results.append(summary(name, TickStats(), paused=True))
            continue
        if isinstance(latest.journey.trigger, s.SegmentTrigger):
            enrolled += runtime.engine.enroll_segment(latest, now=now)
        stats = runtime.engine.tick(name, now=now)
        active = {v.id for v in versions if v.status == "active"}
        sent = runtime.dispatcher.dispatch(now=now, journey_ids=active)
        results.append(
            summary(name, stats, sent, enrolled, failures=failure_report(runtime.db, sent))
        )
    return results


def work(
    runtime: Runtime,
    name: str,
    *,
    reconcile_after: timedelta,
    batch_size: int = 1000,
    until_idle: bool = True,
    report: Console | None = None,
) -> dict[str, Any]:
    """A worker's loop for one journey: reconcile what a dead worker left in flight, then
    advance and send batch after batch. With ``until_idle`` it returns when nothing is due."""
    from tidings.journeys.reconcile import reconcile

    out = report or Console()
    checked = reconcile(runtime, older_than=reconcile_after)
    out.print(
        f"reconciled: sent={checked.sent} requeued={checked.requeued} "
        f"unknown={checked.unknown} failed={checked.failed}"
    )
    versions = {v.id: v for v in runtime.engine.versions(name) if v.status == "active"}
    runtime.engine.convert(list(versions.values()), now=utcnow())
    total = TickStats()
    sent = DispatchStats()
    lost = 0
    while True:
        # three stages: the ticker thread advances batch k+2 (PostgreSQL's time) while this
        # thread renders batch k+1 (the CPU's) and the sender thread sends batch k
        with (
            runtime.dispatcher.pipeline(sent) as pipe,
            Ticker(runtime, versions, batch_size) as tick,
        ):
            while True:
                now, token, stats = tick.next()
                total.add(stats)
                if stats.claimed:
                    claimed = pipe.pump(claim=Claim(token, stats.claimed))
                else:  # retries due, and whatever other processes queued
                    claimed = pipe.pump(now=now, limit=batch_size, journey_ids=set(versions))
                if until_idle and stats.processed == 0 and claimed == 0:
                    break
        if not until_idle or sent.lost == lost:
            break
        # this worker was paused past its lease (a loaded machine) and sent none of what it
        # lost: once those leases run out, reconcile takes the rows back and the loop goes on
        lost = sent.lost
        out.print(f"{lost} claimed messages lost with the lease; reconciling them", highlight=False)
        time.sleep(runtime.settings.lease_seconds)
        reconcile(runtime, older_than=timedelta(0))
    runtime.dispatcher.send_seeds()
    return summary(name, total, sent, failures=failure_report(runtime.db, sent))


class Ticker:
    """A worker's ticks, one batch ahead, in a thread of their own (``work``).

    Each tick writes the messages it queues already claimed by this worker (one row version
    per message less than queuing them and claiming them after) and holds their lease from its
    commit on. While the caller renders one batch, the next is advanced: the tick mostly waits
    for PostgreSQL, rendering mostly uses the CPU. Leaving the block waits for a batch advanced
    ahead and releases its claim unrendered (reconcile queues those rows again when the lease
    runs out, as after a crash); nothing is advanced ahead after a tick that found nothing due.
    """

    def __init__(self, runtime: Runtime, versions: dict[int, Version], batch_size: int) -> None:
        self.runtime = runtime
        self.versions = versions
        self.batch_size = batch_size
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tick")
        self._ahead: Future[tuple[datetime, str, TickStats]] | None = None

    def __enter__(self) -> Ticker:
        return self

    def __exit__(self, *exc: object) -> None:
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None:
                _, token, _ = ahead.result()
                self.runtime.dispatcher.leases.release(token)
        finally:
            self._thread.shutdown(wait=True)

    def next(self) -> tuple[datetime, str, TickStats]:
        """The next batch advanced: (its time, its claim token, what the tick did)."""
        ahead, self._ahead = self._ahead, None
        now, token, stats = (ahead or self._thread.submit(self._advance)).result()
        if stats.processed:  # more may be due
            self._ahead = self._thread.submit(self._advance)
        return now, token, stats

    def _advance(self) -> tuple[datetime, str, TickStats]:
        now = utcnow()
        token = uuid.uuid4().hex
        stats = self.runtime.engine.tick_batch(
            self.versions, now=now, batch_size=self.batch_size, claim_token=token
        )
        if stats.claimed:
            self.runtime.dispatcher.leases.hold(Claim(token, stats.claimed))
        if stats.updated:  # update_contact steps queued changes: live segments follow
            from tidings.segments.live import drain

            drain(self.runtime.engine)
        return now, token, stats


def journey_status(runtime: Runtime, name: str) -> dict[str, Any]:
    versions = runtime.engine.versions(name)
    if not versions:
        raise InputError(f"no journey named {name!r} is registered")
    short = {v.id: v.hash[:8] for v in versions}
    with Session(runtime.db) as session:
        enrollments = session.execute(
            select(Enrollment.journey_id, Enrollment.step_id, Enrollment.status, func.count())
            .where(Enrollment.journey_id.in_(short))
            .group_by(Enrollment.journey_id, Enrollment.step_id, Enrollment.status)
            .order_by(Enrollment.journey_id, Enrollment.status, Enrollment.step_id)
        ).all()
        messages = session.execute(
            select(Message.step_id, Message.variant, Message.channel, Message.status, func.count())
            .where(Message.journey_id.in_(short))
            .group_by(Message.step_id, Message.variant, Message.channel, Message.status)
            .order_by(Message.step_id, Message.variant, Message.status)
        ).all()
        assigned = session.execute(
            select(Experiment.name, Assignment.variant, func.count())
            .join(Assignment, Assignment.experiment_id == Experiment.id)
            .where(Experiment.journey_name == name)
            .group_by(Experiment.name, Assignment.variant)
            .order_by(Experiment.name, Assignment.variant)
        ).all()
        decisions = session.execute(
            select(
                Experiment.name,
                Experiment.status,
                Experiment.winner,
                Experiment.decided_at,
                Experiment.decision_reason,
            )
            .where(Experiment.journey_name == name)
            .order_by(Experiment.name)
        ).all()
    waiting: dict[str, int] = defaultdict(int)
    for _, step, state, count in enrollments:
        if state == "active":
            waiting[step or "-"] += count
    return {
        "status": versions[-1].status,
        "versions": [v.hash[:8] for v in versions],
        "enrollments": [
            {"version": short[j], "step": step, "status": state, "count": n}
            for j, step, state, n in enrollments
        ],
        "messages": [
            {"step": step, "variant": variant, "channel": ch, "status": st, "count": n}
            for step, variant, ch, st, n in messages
        ],
        "experiments": [
            {"experiment": experiment, "variant": variant, "contacts": n}
            for experiment, variant, n in assigned
        ],
        "decisions": [
            {
                "experiment": experiment,
                "status": state,
                "winner": winner,
                "decided_at": at.isoformat() if at else None,
                "reason": reason,
            }
            for experiment, state, winner, at, reason in decisions
        ],
        "waiting": dict(waiting),
    }


def find_contact(runtime: Runtime, ref: str) -> int:
    """A contact id from an external id, an email, or ``#<id>``."""
    with Session(runtime.db) as session:
        if ref.startswith("#") and ref[1:].isdigit():
            found = session.scalar(select(Contact.id).where(Contact.id == int(ref[1:])))
        else:
            found = session.scalar(
                select(Contact.id)
                .where(or_(Contact.external_id == ref, Contact.email == ref.strip().lower()))
                .order_by(Contact.id)
                .limit(1)
            )
    if found is None:
        raise InputError(
            f"no contact with external_id or email {ref!r}",
            hint="import it first: tidings contacts import FILE",
        )
    return int(found)

"""Auto-winner: decide a test share's experiment once, then send the rest the winner.

A send step whose experiment has ``auto_winner:`` sends its variants (and holdout) only to the
contacts of its test share (``journeys.experiments.in_test``); the rest wait at the step. At each
tick, :func:`settle` checks whether the decision is due: ``decide_after`` has passed since the
experiment's first send, or every arm has ``min_recipients``, whichever comes first. Then it
decides once, by the experiment's own metric and rule (``experiment_report``):

* a winner by the rule: ``status = decided``, the winner and the rule's reason are stored;
* inconclusive or blocked (sample-ratio mismatch): ``status = fallback`` and the fallback's
  choice: a named variant (default: the first, the control), ``best_observed`` (the highest
  observed value, said to be not significant) or ``keep_split`` (no winner: the rest is split
  by the weights);

and wakes the rest waiting at the step, who receive the winner at the same tick. The decision is
taken once, at a time fixed in advance, so even a fixed-horizon rule is looked at only once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, select, update

from tidings.analytics.decision import Metric
from tidings.analytics.experiment_report import ExperimentReport, experiment_report, record_look
from tidings.analytics.report import enrollments_t, experiments_t
from tidings.analytics.stats import ArmCounts
from tidings.crm.types import as_utc
from tidings.journeys.schema import Experiment


@dataclass(frozen=True)
class Settled:
    """A decision this look took: who the rest receives (None: split kept) and why."""

    name: str
    status: str  # decided | fallback
    winner: str | None
    reason: str
    woken: int  # enrollments of the rest woken to receive it


def settle(
    conn: Connection,
    name: str,
    experiment: Experiment,
    *,
    journey_ids: list[int],
    step_id: str,
    now: datetime,
) -> Settled | None:
    """Decide auto-winner experiment ``name`` if its decision is due and not taken yet."""
    auto = experiment.auto_winner
    assert auto is not None
    row = conn.execute(
        select(
            experiments_t.c.id,
            experiments_t.c.status,
            experiments_t.c.created_at,
            experiments_t.c.variants,
        ).where(experiments_t.c.name == name)
    ).first()
    if row is None or row.status != "running":
        return None  # no send yet, or decided already
    by_time = auto.decide_after is not None and now >= as_utc(row.created_at) + timedelta(
        seconds=auto.decide_after
    )
    if not by_time and auto.min_recipients is None:
        return None  # not due, and no sample size to check: no report to compute
    report = experiment_report(conn, name, record=False, now=now)
    by_size = auto.min_recipients is not None and all(
        a.recipients >= auto.min_recipients for a in report.arms
    )
    if not (by_time or by_size):
        return None
    record_look(conn, report, row.id, dict(row.variants or {}), now=now)
    when = (
        f"every arm reached {auto.min_recipients} recipients"
        if by_size
        else f"{_hours(auto.decide_after or 0)} after the first send"
    )
    if report.recorded:
        status, winner = "decided", report.winner
        reason = f"decided when {when}: {report.decision.reason}"
        conn.execute(
            update(experiments_t).where(experiments_t.c.id == row.id).values(decision_reason=reason)
        )
    else:
        status = "fallback"
        winner, chosen = _fallback(report, experiment)
        reason = (
            f"{report.decision.outcome} when {when} ({report.decision.reason}); fallback {chosen}"
        )
        done = conn.execute(
            update(experiments_t)
            .where(experiments_t.c.id == row.id, experiments_t.c.status == "running")
            .values(status=status, winner=winner, decided_at=now, decision_reason=reason)
        )
        if not getattr(done, "rowcount", 0):
            return None  # another worker decided it first
    woken = conn.execute(  # the rest waits at the step until now: the decision wakes it
        update(enrollments_t)
        .where(
            enrollments_t.c.journey_id.in_(journey_ids),
            enrollments_t.c.step_id == step_id,
            enrollments_t.c.status == "active",
            enrollments_t.c.next_due_at > now,
        )
        .values(next_due_at=now)
    )
    return Settled(name, status, winner, reason, int(getattr(woken, "rowcount", 0) or 0))


def _fallback(report: ExperimentReport, experiment: Experiment) -> tuple[str | None, str]:
    """The fallback's winner (None for keep_split) and how it was chosen, in words."""
    auto = experiment.auto_winner
    assert auto is not None
    rule = auto.fallback or experiment.variants[0].name
    if rule == "keep_split":
        return None, "keep_split: the rest is split by the weights"
    if rule == "best_observed":
        best = max(report.arms, key=lambda a: _value(a, report.metric))
        value = _value(best, report.metric)
        shown = f"{value:.2f}" if report.metric == "revenue" else f"{100 * value:.2f}%"
        return best.name, (
            f"best_observed: {best.name} ({report.metric} {shown}, highest observed, "
            "not significant)"
        )
    return rule, f"{rule}: the configured variant" + (
        " (the control)" if rule == experiment.variants[0].name else ""
    )


def _value(arm: ArmCounts, metric: Metric) -> float:
    return float(arm.revenue_mean if metric == "revenue" else arm.rate)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:g} hours" if hours >= 1 else f"{seconds / 60:g} minutes"

"""The experiment report: per-arm counts from the store, the decision, the SRM check, the lift.

:func:`experiment_report` reads one experiment (``experiments`` row, its ``assignments``, the
messages of its step, the conversions of its journey), asks :func:`tidings.analytics.decide`
(default: the sequential rule, valid under continuous peeking), and with ``record=True``:

* stores each challenger's always-valid p-value (the running minimum the sequential rule
  needs between looks) in ``experiments.variants`` next to its weight:
  ``{"A": {"weight": 50}, "B": {"weight": 50, "p_value": 0.21, "recipients": 5120,
  "looked_at": "2026-11-02T09:00:00+00:00"}}``; no schema change;
* writes ``experiments.winner``, ``decided_at`` and ``status = 'decided'`` when the decision
  names a winner, once: a decided experiment is never re-decided (its report says when and
  what was decided).

Arms by metric:

``open`` / ``click``
    the messages of the experiment's step, per variant, that were sent; successes: messages
    with a human open / human click (the one rule of :mod:`tidings.analytics.engagement`).
``conversion`` / ``revenue``
    the contacts assigned to each variant (intent to treat: assigned, whether or not the
    message was held by policy); successes: those with a conversion of the journey at or after
    their assignment; revenue: its value (0 without). Contacts in the journey's control group
    receive nothing, so they are left out of every arm.

The sample-ratio check compares the assignment counts, holdout included, with the configured
weights (``variant_for`` gives the holdout its percent first, the variants the rest by weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, and_, case, func, select, update

from tidings.analytics.decision import Decision, Metric, Rule, decide
from tidings.analytics.engagement import has, is_sent, message_flags, messages
from tidings.analytics.report import (
    STEPS_SETTINGS,
    assignments_t,
    conversions_t,
    experiments_t,
    journey_versions,
    squares_to_money,
    sum_of_squares,
    tune_for_reports,
)
from tidings.analytics.stats import ArmCounts, Lift, incremental_lift
from tidings.crm.types import utcnow
from tidings.errors import InputError
from tidings.journeys.experiments import HOLDOUT, in_control

METRICS: tuple[Metric, ...] = ("open", "click", "conversion", "revenue")
RULES: tuple[Rule, ...] = ("sequential", "fixed", "bayesian")


@dataclass
class ExperimentReport:
    name: str
    journey: str | None
    step: str | None
    metric: Metric
    rule: Rule
    weights: dict[str, float]  # the configured weights, holdout included when it has a share
    assigned: dict[str, int]  # assignment counts, holdout included
    arms: list[ArmCounts]
    decision: Decision
    previous_p_values: dict[str, float]
    conversion_arms: list[ArmCounts] = field(default_factory=list)
    lift: Lift | None = None
    winner: str | None = None  # as stored (now or earlier)
    decided_at: datetime | None = None
    recorded: bool = False  # this look wrote the winner
    status: str = "running"  # running, decided (by the rule) or fallback (auto-winner)
    decision_reason: str | None = None  # as stored with the winner

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        srm = d.srm
        out: dict[str, Any] = _plain(
            {
                "experiment": self.name,
                "journey": self.journey,
                "step": self.step,
                "metric": self.metric,
                "rule": self.rule,
                "outcome": d.outcome,
                "winner": d.winner,
                "reason": d.reason,
                "test": d.test,
                "peeking_safe": d.peeking_safe,
                "alpha": d.alpha,
                "p_values": d.p_values,
                "p_adjusted": {c.treatment: c.p_adjusted for c in d.comparisons},
                "probabilities": dict(d.probabilities),
                "threshold": d.threshold,
                "comparisons": [asdict(c) for c in d.comparisons],
                "srm": None
                if srm is None
                else {
                    "observed": dict(srm.observed),
                    "expected": dict(srm.expected),
                    "statistic": srm.statistic,
                    "p_value": srm.p_value,
                    "threshold": srm.threshold,
                    "mismatch": srm.mismatch,
                    "reason": srm.reason,
                },
                "weights": self.weights,
                "assigned": self.assigned,
                "arms": [_arm(a) for a in self.arms],
                "conversion_arms": [_arm(a) for a in self.conversion_arms],
                "lift": None
                if self.lift is None
                else {
                    "conversion": asdict(self.lift.conversion),
                    "revenue": asdict(self.lift.revenue) if self.lift.revenue else None,
                },
                "previous_p_values": self.previous_p_values,
                "stored_winner": self.winner,
                "status": self.status,
                "decision_reason": self.decision_reason,
                "decided_at": self.decided_at.isoformat() if self.decided_at else None,
                "recorded_now": self.recorded,
            }
        )
        return out


def _arm(a: ArmCounts) -> dict[str, Any]:
    return {
        "name": a.name,
        "recipients": a.recipients,
        "successes": a.successes,
        "rate": a.rate,
        "revenue": str(a.revenue),
        "revenue_per_recipient": a.revenue_mean,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def experiment_config(definition: Mapping[str, Any], step: str | None) -> dict[str, Any]:
    """The ``experiment:`` mapping of ``step`` in a journey definition ({} when absent)."""
    for s in definition.get("steps", []):
        if isinstance(s, dict) and s.get("id") == step and isinstance(s.get("experiment"), dict):
            return dict(s["experiment"])
    return {}


def experiment_report(
    conn: Connection,
    name: str,
    *,
    metric: Metric | None = None,
    rule: Rule | None = None,
    alpha: float | None = None,
    record: bool = True,
    now: datetime | None = None,
) -> ExperimentReport:
    """Decide experiment ``name`` at this look; with ``record`` store what the next look needs
    and the winner (once). ``metric``, ``rule`` and ``alpha`` default to the experiment's own
    (its ``experiment:`` in the journey YAML). Run it inside a transaction
    (``engine.begin()``)."""
    now = now or utcnow()
    tune_for_reports(conn, STEPS_SETTINGS)
    row = conn.execute(select(experiments_t).where(experiments_t.c.name == name)).mappings().first()
    if row is None:
        known = conn.scalars(select(experiments_t.c.name).order_by(experiments_t.c.name))
        raise InputError(
            f"no experiment named {name!r} in the store",
            hint=f"known: {', '.join(known) or 'none yet (stored at its first send)'}",
        )
    journey = row["journey_name"]
    ids: list[int] = []
    definition: dict[str, Any] = {}
    if journey:
        ids, definition = journey_versions(conn, journey)
    own = experiment_config(definition, row["step_id"])
    metric = metric or cast(Metric, own.get("metric", "click"))
    rule = rule or cast(Rule, own.get("rule", "sequential"))
    alpha = alpha if alpha is not None else float(own.get("alpha", 0.05))
    config: dict[str, Any] = dict(row["variants"] or {})
    names = [k for k, v in config.items() if isinstance(v, dict) and "weight" in v]
    holdout = float(row["holdout_percent"] or 0)
    total_w = sum(float(config[k]["weight"]) for k in names)
    weights = {k: (100 - holdout) * float(config[k]["weight"]) / total_w for k in names}
    if holdout > 0:
        weights[HOLDOUT] = holdout
    assigned = {k: 0 for k in weights}
    for variant, n in conn.execute(
        select(assignments_t.c.variant, func.count())
        .where(assignments_t.c.experiment_id == row["id"])
        .group_by(assignments_t.c.variant)
    ):
        assigned[str(variant)] = int(n)
    control = float((definition.get("settings") or {}).get("control_group") or 0)
    conversion_arms = _conversion_arms(
        conn, row["id"], ids, [*names, HOLDOUT], journey=journey, control=control
    )
    if metric in ("open", "click"):
        arms = _message_arms(conn, row["id"], ids, row["step_id"], names, kind=metric)
    else:
        arms = [a for a in conversion_arms if a.name in names]
    previous = {
        k: float(config[k]["p_value"])
        for k in names
        if isinstance(config[k].get("p_value"), int | float)
    }
    srm_weights = {k: w for k, w in weights.items() if w > 0}
    decision = decide(
        arms,
        metric=metric,
        rule=rule,
        alpha=alpha,
        weights=srm_weights if len(srm_weights) >= 2 else None,
        assignments={k: assigned.get(k, 0) for k in srm_weights},
        previous_p_values=previous if rule == "sequential" else None,
        threshold=float(own.get("threshold", 0.95)),
    )
    lift = None
    by_name = {a.name: a for a in conversion_arms}
    if holdout > 0 and by_name.get(HOLDOUT) and by_name[HOLDOUT].recipients:
        treated = [a for a in conversion_arms if a.name in names]
        merged = ArmCounts(
            "treated",
            sum(a.recipients for a in treated),
            sum(a.successes for a in treated),
            sum((Decimal(str(a.revenue)) for a in treated), Decimal(0)),
            sum((Decimal(str(a.revenue_sq)) for a in treated), Decimal(0)),
        )
        if merged.recipients:
            lift = incremental_lift(merged, by_name[HOLDOUT], alpha=alpha)
    report = ExperimentReport(
        name=name,
        journey=journey,
        step=row["step_id"],
        metric=metric,
        rule=rule,
        weights=weights,
        assigned=assigned,
        arms=arms,
        decision=decision,
        previous_p_values=previous,
        conversion_arms=conversion_arms,
        lift=lift,
        winner=row["winner"],
        decided_at=row["decided_at"],
        status=row["status"],
        decision_reason=row["decision_reason"],
    )
    if record:
        record_look(conn, report, row["id"], config, now=now)
    return report


def record_look(
    conn: Connection,
    report: ExperimentReport,
    experiment_id: int,
    config: dict[str, Any],
    *,
    now: datetime,
) -> None:
    """Store this look: the sequential rule's running p-values, and a winner (once)."""
    d = report.decision
    if report.rule == "sequential" and d.comparisons:
        stored = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
        recipients = {a.name: a.recipients for a in report.arms}
        for variant, p in d.p_values.items():
            entry = dict(stored.get(variant) or {})
            entry.update(p_value=p, recipients=recipients.get(variant), looked_at=now.isoformat())
            stored[variant] = entry
        conn.execute(
            update(experiments_t).where(experiments_t.c.id == experiment_id).values(variants=stored)
        )
    if d.outcome == "winner" and report.winner is None:
        done = conn.execute(
            update(experiments_t)
            .where(experiments_t.c.id == experiment_id, experiments_t.c.winner.is_(None))
            .values(winner=d.winner, decided_at=now, status="decided", decision_reason=d.reason)
        )
        if getattr(done, "rowcount", 0):
            report.winner, report.decided_at, report.recorded = d.winner, now, True
            report.status, report.decision_reason = "decided", d.reason


def _message_arms(
    conn: Connection,
    experiment_id: int,
    ids: list[int],
    step: str | None,
    names: list[str],
    *,
    kind: str,
) -> list[ArmCounts]:
    """Sent messages of the step per variant, of contacts assigned to the experiment (an
    auto-winner's rest receives the winner's variant unassigned: it is not in the test)."""
    m, a = messages, assignments_t
    assigned = (
        select(a.c.id)
        .where(a.c.experiment_id == experiment_id, a.c.contact_id == m.c.contact_id)
        .exists()
    )
    scope = and_(
        m.c.journey_id.in_(ids),
        m.c.step_id == step,
        m.c.variant.in_(names),
        is_sent(m),
        assigned,
    )
    flags = message_flags(select(m.c.id).where(scope))
    flag = has(flags.c.bits, "human_open" if kind == "open" else "click")
    query = (
        select(m.c.variant, func.count(), func.sum(case((flag, 1), else_=0)))
        .select_from(m.outerjoin(flags, flags.c.message_id == m.c.id))
        .where(scope)
        .group_by(m.c.variant)
    )
    found = {str(v): (int(n), int(x or 0)) for v, n, x in conn.execute(query)}
    return [ArmCounts(k, *found.get(k, (0, 0))) for k in names]


def _conversion_arms(
    conn: Connection,
    experiment_id: int,
    ids: list[int],
    names: list[str],
    *,
    journey: str | None,
    control: float,
) -> list[ArmCounts]:
    a, c = assignments_t, conversions_t
    per_assignment = (
        select(a.c.id.label("aid"), func.sum(c.c.value).label("value"))
        .select_from(
            a.join(
                c,
                and_(
                    c.c.contact_id == a.c.contact_id,
                    c.c.journey_id.in_(ids),
                    c.c.occurred_at >= a.c.assigned_at,
                ),
            )
        )
        .where(a.c.experiment_id == experiment_id)
        .group_by(a.c.id)
        .subquery("converted")
    )
    value = func.coalesce(per_assignment.c.value, 0)
    joined = a.outerjoin(per_assignment, per_assignment.c.aid == a.c.id)
    sums: dict[str, list[Any]] = {k: [0, 0, Decimal(0), Decimal(0)] for k in names}
    if control > 0 and journey:
        query = (
            select(a.c.variant, a.c.contact_id, per_assignment.c.aid, value)
            .select_from(joined)
            .where(a.c.experiment_id == experiment_id)
        )
        for variant, contact, converted, amount in conn.execute(query):
            if in_control(journey, contact, control):
                continue
            money = Decimal(str(amount))
            acc = sums.setdefault(str(variant), [0, 0, Decimal(0), Decimal(0)])
            acc[0] += 1
            acc[1] += converted is not None
            acc[2] += money
            acc[3] += money * money
    else:
        query = (
            select(
                a.c.variant,
                func.count(),
                func.count(per_assignment.c.aid),
                func.sum(value),
                sum_of_squares(value),
            )
            .select_from(joined)
            .where(a.c.experiment_id == experiment_id)
            .group_by(a.c.variant)
        )
        for variant, n, x, s, sq in conn.execute(query):
            sums[str(variant)] = [int(n), int(x), Decimal(str(s or 0)), squares_to_money(sq)]
    return [ArmCounts(k, *sums[k]) for k in names if k in sums and (k != HOLDOUT or sums[k][0])]

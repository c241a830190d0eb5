"""The journey report: per step and per variant, from the store, set-based.

:func:`journey_report` reads one journey (all its versions) in a few ``GROUP BY`` queries:

1. messages per ``(step, variant)``, each joined to its per-message engagement flags
   (:func:`tidings.analytics.engagement.message_flags`: one rule for opens and clicks);
2. conversions per ``(step, variant)`` of their last touch (``conversions.message_id``);
3. enrollments per arm (the contact's variant in the journey's first experiment, ``holdout``
   included, or ``control`` for the journey's control group) with their conversions and
   revenue: the arms the lift against the holdout or control group is measured on;
4. attribution credit per model and step (``attributions``, see ``tidings attribution run``);
5. conversions and revenue per day and arm.

Every rate is over the messages *sent* (accepted by the provider) of its row, with a Wilson
score interval; conversion rate per arm is over enrollments.

>>> with engine.connect() as conn:                               # doctest: +SKIP
...     report = journey_report(conn, "welcome")
>>> report.steps[0].rate("human_opens")                          # doctest: +SKIP
Rate(successes=41, n=120, value=0.3416, low=0.2615, high=0.4316)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from scipy import stats as _st  # type: ignore[import-untyped]
from sqlalchemy import Connection, Integer, Table, and_, case, func, select, text, type_coerce

from tidings.analytics.engagement import decode, is_sent, message_flags, messages
from tidings.analytics.stats import ArmCounts, Lift, incremental_lift
from tidings.crm.models import (
    Assignment,
    Attribution,
    Conversion,
    Enrollment,
    Experiment,
    Journey,
    MessageStatus,
)
from tidings.crm.types import utcnow
from tidings.errors import InputError
from tidings.journeys.experiments import CONTROL, HOLDOUT, in_control

journeys_t: Table = Journey.__table__  # type: ignore[assignment]
enrollments_t: Table = Enrollment.__table__  # type: ignore[assignment]
assignments_t: Table = Assignment.__table__  # type: ignore[assignment]
conversions_t: Table = Conversion.__table__  # type: ignore[assignment]
attributions_t: Table = Attribution.__table__  # type: ignore[assignment]
experiments_t: Table = Experiment.__table__  # type: ignore[assignment]

#: The counts of a step row, in report order; every one but ``sent`` has a rate over ``sent``.
COUNTS = (
    "sent",
    "delivered",
    "bounced",
    "human_opens",
    "machine_opens",
    "clicks",
    "unsubscribes",
    "complaints",
    "conversions",
)
ALL = "*"  # the variant of a step's total row
NO_VARIANT = "-"  # messages of a step without an experiment
UNASSIGNED = "unassigned"  # enrolled, never reached the experiment step
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson score interval (``value`` is 0 when ``n`` is 0)."""

    successes: int
    n: int
    value: float
    low: float
    high: float


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Rate:
    """Wilson score interval of ``successes / n`` (no continuity correction).

    >>> r = wilson(30, 1000)
    >>> round(r.value, 4), round(r.low, 4), round(r.high, 4)
    (0.03, 0.0211, 0.0425)
    """
    if n <= 0:
        return Rate(successes, n, 0.0, 0.0, 0.0)
    z = float(_st.norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(successes, n, p, max(0.0, center - half), min(1.0, center + half))


@dataclass
class StepRow:
    """One step and variant (``*`` for the step's total, ``-`` when the step has none)."""

    step: str
    variant: str
    messages: int = 0  # every outbox row, sent or not
    held: int = 0  # stopped by policy (consent, suppression, cap)
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    human_opens: int = 0
    machine_opens: int = 0
    clicks: int = 0
    unsubscribes: int = 0
    complaints: int = 0
    conversions: int = 0
    revenue: Decimal = Decimal(0)

    def rate(self, count: str) -> Rate:
        """``count / sent`` with its Wilson interval."""
        return wilson(int(getattr(self, count)), self.sent)

    def add(self, other: StepRow) -> None:
        for name in ("messages", "held", *COUNTS):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.revenue += other.revenue


@dataclass
class Arm:
    """Enrollments of one arm: its conversions and revenue (per enrollment)."""

    name: str
    enrolled: int = 0
    conversions: int = 0
    revenue: Decimal = Decimal(0)
    revenue_sq: Decimal = Decimal(0)

    @property
    def conversion_rate(self) -> Rate:
        return wilson(self.conversions, self.enrolled)

    @property
    def revenue_per_enrollment(self) -> float:
        return float(self.revenue / self.enrolled) if self.enrolled else 0.0

    def counts(self) -> ArmCounts:
        return ArmCounts(self.name, self.enrolled, self.conversions, self.revenue, self.revenue_sq)


@dataclass(frozen=True)
class LiftRow:
    """Treated enrollments against a holdout or the control group."""

    baseline: str  # "holdout" or "control"
    treated: str  # which arms were treated, in words
    lift: Lift


@dataclass(frozen=True)
class AttributionRow:
    model: str
    step: str
    conversions: int
    weight: float
    value: Decimal


@dataclass(frozen=True)
class DayRow:
    day: str
    arm: str
    conversions: int
    revenue: Decimal


@dataclass
class JourneyReport:
    journey: str
    versions: int
    generated_at: datetime
    steps: list[StepRow] = field(default_factory=list)
    arms: list[Arm] = field(default_factory=list)
    lifts: list[LiftRow] = field(default_factory=list)
    attribution: list[AttributionRow] = field(default_factory=list)
    revenue_by_day: list[DayRow] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)

    @property
    def total(self) -> StepRow:
        """The whole journey (every step's messages)."""
        row = StepRow(step=ALL, variant=ALL)
        for r in self.steps:
            if r.variant == ALL or not self._has_total(r.step):
                row.add(r)
        return row

    def _has_total(self, step: str) -> bool:
        return any(r.step == step and r.variant == ALL for r in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: Decimals as strings, rates with their intervals."""

        def rates(row: StepRow) -> dict[str, Any]:
            return {c: asdict(row.rate(c)) for c in COUNTS if c != "sent"}

        return {
            "journey": self.journey,
            "versions": self.versions,
            "generated_at": self.generated_at.isoformat(),
            "confidence": CONFIDENCE,
            "rates_over": "sent",
            "experiments": self.experiments,
            "steps": [{**_plain(asdict(r)), "rates": rates(r)} for r in [*self.steps, self.total]],
            "arms": [
                {
                    **_plain(asdict(a)),
                    "conversion_rate": asdict(a.conversion_rate),
                    "revenue_per_enrollment": a.revenue_per_enrollment,
                }
                for a in self.arms
            ],
            "lift": [
                {
                    "baseline": lr.baseline,
                    "treated": lr.treated,
                    "conversion": _plain(asdict(lr.lift.conversion)),
                    "revenue": _plain(asdict(lr.lift.revenue)) if lr.lift.revenue else None,
                }
                for lr in self.lifts
            ],
            "attribution": [_plain(asdict(a)) for a in self.attribution],
            "revenue_by_day": [_plain(asdict(d)) for d in self.revenue_by_day],
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        """One flat row per step and variant (and the journey total): counts, rates, bounds."""
        out = []
        for r in [*self.steps, self.total]:
            row: dict[str, Any] = {
                "step": r.step,
                "variant": r.variant,
                "messages": r.messages,
                "held": r.held,
            }
            for c in COUNTS:
                row[c] = getattr(r, c)
                if c != "sent":
                    rate = r.rate(c)
                    row[f"{c}_rate"] = round(rate.value, 6)
                    row[f"{c}_low"] = round(rate.low, 6)
                    row[f"{c}_high"] = round(rate.high, 6)
            row["revenue"] = str(r.revenue)
            out.append(row)
        return out


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: str(v) if isinstance(v, Decimal) else (_plain(v) if isinstance(v, dict) else v)
        for k, v in d.items()
    }


def _money(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def sum_of_squares(value: Any) -> Any:
    """``SUM(value * value)`` for money, exact: in squared cents (the column type would round
    the result to cents on SQLite); read it back with :func:`squares_to_money`."""
    cents = func.round(value * 100)
    return type_coerce(func.sum(cents * cents), Integer)


def squares_to_money(value: Any) -> Decimal:
    """The sum of squared cents as money squared."""
    return _money(value) / 10_000 if value is not None else Decimal(0)


REPORT_SETTINGS = {"max_parallel_workers_per_gather": "0", "jit": "off"}
"""PostgreSQL settings for the report's own transaction (``SET LOCAL``, measured by
``benchmarks/report.py`` on 2 cores): parallel workers each re-ran the whole per-message
aggregate (5.3 s instead of 3.9 s), and JIT compilation alone cost 1.8 s."""

STEPS_SETTINGS = {"work_mem": "16MB", "enable_hashjoin": "off"}
"""For the per-message query: the plan that streams (an index-only scan of (message_id, type,
machine) in message order, aggregated as read, merge-joined to the messages read in id
order) needs no memory, and it is the one wanted at any size. Left to itself PostgreSQL 15
hashed all 5M events with a large work_mem (15 s instead of 3.4 s), or hash-joined on a
misestimate and spilled to disk (4 s). The future setting is ``TIDINGS_REPORT_WORK_MEM``."""

ARMS_SETTINGS = {"work_mem": "128MB", "enable_hashjoin": "on"}
"""For the enrollments x assignments x conversions join: hash joins, in memory."""


def tune_for_reports(conn: Connection, extra: dict[str, str] | None = None) -> None:
    """``SET LOCAL`` :data:`REPORT_SETTINGS` (and ``extra``) on PostgreSQL; they end with the
    transaction."""
    if conn.dialect.name != "postgresql":
        return
    settings = {**REPORT_SETTINGS, **(extra or {})}
    for name, value in settings.items():
        conn.execute(text(f"SET LOCAL {name} = '{value}'"))


def journey_versions(conn: Connection, name: str) -> tuple[list[int], dict[str, Any]]:
    """The ids of every stored version of journey ``name`` and the newest definition."""
    rows = conn.execute(
        select(journeys_t.c.id, journeys_t.c.definition)
        .where(journeys_t.c.name == name)
        .order_by(journeys_t.c.id)
    ).all()
    if not rows:
        known = conn.scalars(select(journeys_t.c.name).distinct().order_by(journeys_t.c.name))
        raise InputError(
            f"no journey named {name!r} in the store",
            hint=f"known: {', '.join(known) or 'none (run a journey first)'}",
        )
    return [int(r[0]) for r in rows], dict(rows[-1][1] or {})


def journey_report(conn: Connection, name: str, *, now: datetime | None = None) -> JourneyReport:
    """The report of journey ``name`` (every stored version) as of now."""
    ids, definition = journey_versions(conn, name)
    tune_for_reports(conn, STEPS_SETTINGS)
    report = JourneyReport(journey=name, versions=len(ids), generated_at=now or utcnow())
    order = [str(s.get("id")) for s in definition.get("steps", []) if isinstance(s, dict)]
    report.steps = _steps(conn, ids, order)
    experiments = conn.execute(
        select(experiments_t.c.id, experiments_t.c.name)
        .where(experiments_t.c.journey_name == name)
        .order_by(experiments_t.c.id)
    ).all()
    report.experiments = [str(e[1]) for e in experiments]
    control = float((definition.get("settings") or {}).get("control_group") or 0)
    first = int(experiments[0][0]) if experiments else None
    tune_for_reports(conn, ARMS_SETTINGS)
    report.arms = _arms(conn, ids, name, first_experiment=first, control=control)
    report.lifts = lifts(report.arms)
    report.attribution = _attribution(conn, ids)
    report.revenue_by_day = _by_day(conn, ids)
    return report


def _steps(conn: Connection, ids: list[int], order: list[str]) -> list[StepRow]:
    m = messages
    # the journey's messages span a range of ids: the events of that range, streamed from the
    # index in message order, and the outer join keeps only the journey's own messages
    lowest = select(func.min(m.c.id)).where(m.c.journey_id.in_(ids)).scalar_subquery()
    highest = select(func.max(m.c.id)).where(m.c.journey_id.in_(ids)).scalar_subquery()
    flags = message_flags(between=(lowest, highest))
    sent = case((is_sent(m), 1), else_=0)
    # one row per (step, variant, status, sent, flag combination): a few hundred rows at most,
    # whatever the number of messages; the counts are summed up below
    query = (
        select(m.c.step_id, m.c.variant, m.c.status, sent, flags.c.bits, func.count())
        .select_from(m.outerjoin(flags, flags.c.message_id == m.c.id))
        .where(m.c.journey_id.in_(ids))
        .group_by(m.c.step_id, m.c.variant, m.c.status, sent, flags.c.bits)
    )
    rows: dict[tuple[str, str], StepRow] = {}
    for step, variant, status, was_sent, bits, n in conn.execute(query):
        key = (str(step or "?"), str(variant or NO_VARIANT))
        row = rows.setdefault(key, StepRow(*key))
        n = int(n)
        row.messages += n
        row.held += n if status == MessageStatus.HELD.value else 0
        if not was_sent:
            continue
        f = decode(bits)
        row.sent += n
        row.delivered += n if status == MessageStatus.DELIVERED.value or f["delivered_event"] else 0
        row.bounced += n if status == MessageStatus.BOUNCED.value or f["bounce_event"] else 0
        row.human_opens += n if f["human_open"] else 0
        row.machine_opens += n if f["machine_open"] else 0
        row.clicks += n if f["click"] else 0
        row.unsubscribes += n if f["unsubscribe"] else 0
        row.complaints += n if f["complaint"] else 0
    conv = conn.execute(
        select(m.c.step_id, m.c.variant, func.count(), func.sum(conversions_t.c.value))
        .select_from(conversions_t.join(m, m.c.id == conversions_t.c.message_id))
        .where(conversions_t.c.journey_id.in_(ids))
        .group_by(m.c.step_id, m.c.variant)
    )
    for step, variant, n, value in conv:
        key = (str(step or "?"), str(variant or NO_VARIANT))
        row = rows.setdefault(key, StepRow(*key))
        row.conversions, row.revenue = int(n), _money(value)
    by_step: dict[str, list[StepRow]] = defaultdict(list)
    for row in rows.values():
        by_step[row.step].append(row)
    position = {s: i for i, s in enumerate(order)}
    out: list[StepRow] = []
    for step in sorted(by_step, key=lambda s: (position.get(s, len(order)), s)):
        group = sorted(by_step[step], key=lambda r: r.variant)
        out.extend(group)
        if len(group) > 1 or group[0].variant != NO_VARIANT:
            total = StepRow(step, ALL)
            for r in group:
                total.add(r)
            out.append(total)
    return out


def _arms(
    conn: Connection,
    ids: list[int],
    name: str,
    *,
    first_experiment: int | None,
    control: float,
) -> list[Arm]:
    e, a, c = enrollments_t, assignments_t, conversions_t
    value = func.coalesce(c.c.value, 0)
    joined = e.outerjoin(c, c.c.enrollment_id == e.c.id)
    variant: Any = None
    if first_experiment is not None:
        joined = joined.outerjoin(
            a, and_(a.c.contact_id == e.c.contact_id, a.c.experiment_id == first_experiment)
        )
        variant = a.c.variant
    arms: dict[str, Arm] = {}
    default = UNASSIGNED if first_experiment is not None else NO_VARIANT
    if control > 0:  # the control group is a hash of the contact: decided here, per row
        cols: list[Any] = [e.c.contact_id, c.c.id, value]
        if variant is not None:
            cols.append(variant)
        query = select(*cols).select_from(joined).where(e.c.journey_id.in_(ids))
        for contact, conversion, amount, *assigned in conn.execute(query):
            arm_name = (
                CONTROL
                if in_control(name, contact, control)
                else str((assigned[0] if assigned else None) or default)
            )
            arm = arms.setdefault(arm_name, Arm(arm_name))
            money = _money(amount)
            arm.enrolled += 1
            arm.conversions += conversion is not None
            arm.revenue += money
            arm.revenue_sq += money * money
    else:
        cols = [
            func.count(e.c.id),
            func.count(c.c.id),
            func.sum(value),
            sum_of_squares(value),
        ]
        group = [variant] if variant is not None else []
        query = select(*group, *cols).select_from(joined).where(e.c.journey_id.in_(ids))
        if group:
            query = query.group_by(*group)
        for row in conn.execute(query):
            *head, enrolled, converted, revenue, revenue_sq = row
            if not enrolled:
                continue
            arm_name = str((head[0] if head else None) or default)
            arms[arm_name] = Arm(
                arm_name,
                int(enrolled),
                int(converted),
                _money(revenue),
                squares_to_money(revenue_sq),
            )
    special = {HOLDOUT: 1, CONTROL: 2, UNASSIGNED: 3}
    return sorted(arms.values(), key=lambda x: (special.get(x.name, 0), x.name))


def _merge(name: str, arms: Iterable[Arm]) -> Arm:
    out = Arm(name)
    for arm in arms:
        out.enrolled += arm.enrolled
        out.conversions += arm.conversions
        out.revenue += arm.revenue
        out.revenue_sq += arm.revenue_sq
    return out


def lifts(arms: Sequence[Arm]) -> list[LiftRow]:
    """Lift against the holdout (treated: the assigned variants) and against the journey's
    control group (treated: every other enrollment), when there are enough contacts."""
    by_name = {a.name: a for a in arms}
    out = []
    holdout = by_name.get(HOLDOUT)
    if holdout is not None:
        treated = [a for a in arms if a.name not in {HOLDOUT, CONTROL, UNASSIGNED}]
        merged = _merge("treated", treated)
        if merged.enrolled and holdout.enrolled:
            words = "+".join(a.name for a in treated)
            out.append(LiftRow(HOLDOUT, words, incremental_lift(merged.counts(), holdout.counts())))
    control = by_name.get(CONTROL)
    if control is not None:
        merged = _merge("treated", [a for a in arms if a.name != CONTROL])
        if merged.enrolled and control.enrolled:
            lift = incremental_lift(merged.counts(), control.counts())
            out.append(LiftRow(CONTROL, "every enrollment outside the control group", lift))
    return out


def _attribution(conn: Connection, ids: list[int]) -> list[AttributionRow]:
    at, m = attributions_t, messages
    query = (
        select(
            at.c.model,
            m.c.step_id,
            func.count(func.distinct(at.c.conversion_id)),
            func.sum(at.c.weight),
            func.sum(at.c.value),
        )
        .select_from(at.join(m, m.c.id == at.c.message_id))
        .where(m.c.journey_id.in_(ids))
        .group_by(at.c.model, m.c.step_id)
        .order_by(at.c.model, m.c.step_id)
    )
    return [
        AttributionRow(str(model), str(step or "?"), int(n), float(w or 0), _money(v))
        for model, step, n, w, v in conn.execute(query)
    ]


def _by_day(conn: Connection, ids: list[int]) -> list[DayRow]:
    c = conversions_t
    day = func.date(c.c.occurred_at)
    query = (
        select(day, c.c.variant, func.count(), func.sum(c.c.value))
        .where(c.c.journey_id.in_(ids))
        .group_by(day, c.c.variant)
        .order_by(day, c.c.variant)
    )
    return [
        DayRow(str(d), str(v or NO_VARIANT), int(n), _money(s))
        for d, v, n, s in conn.execute(query)
    ]

"""The small core that segment rules are rewritten into before compiling (STYLE.md 4).

Shorthand disappears here: ``ne`` becomes ``Not(eq)``, ``between`` two comparisons,
``older_than: 30 days`` a ``lt`` against a time relative to ``now``, ``consent`` a conjunction
of granted consent, an address and no suppression, ``segment: vip`` the referenced rule itself.
What is left is a dozen node kinds, each with one compile function in ``segments.compile``.

>>> from tidings.segments.rules import Segment
>>> seg = Segment.model_validate({"name": "a", "rule": {"attribute": "plan", "ne": "pro"}})
>>> to_core(seg.rule)
Not(child=Compare(target=Json(column='attributes', path=('plan',)), op='eq', value='pro'))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from typing import Literal, TypeAlias, assert_never

from tidings.segments import rules as r

Time: TypeAlias = "datetime | r.Ago"
Atom: TypeAlias = "bool | int | float | Decimal | str | datetime | r.Ago"
CmpOp = Literal["eq", "gt", "gte", "lt", "lte", "in", "contains", "starts_with", "exists"]
CountOp = Literal["eq", "gt", "gte", "lt", "lte"]


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Json:
    column: Literal["attributes", "properties"]
    path: tuple[str, ...]


@dataclass(frozen=True)
class All:
    children: tuple[Core, ...]


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Core, ...]


@dataclass(frozen=True)
class Not:
    child: Core


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class Compare:
    """``target op value``; ``in`` takes a tuple; ``exists`` ignores the value."""

    target: Column | Json
    op: CmpOp
    value: Atom | tuple[Atom, ...] | None


@dataclass(frozen=True)
class EventCount:
    """Events named ``name`` (``*`` in it: any text) matching ``where``, since ``since``,
    compared ``op n``."""

    name: str
    where: tuple[Core, ...]
    since: float | None  # seconds before now
    op: CountOp
    n: int


@dataclass(frozen=True)
class LastEvent:
    """The contact's latest event named ``name`` (a pattern too) matches ``where`` and is
    inside ``since``."""

    name: str
    where: tuple[Core, ...]
    since: float | None


@dataclass(frozen=True)
class HasBeen:
    """``held`` (a condition on ``attributes``) held without a break for the last ``seconds``:
    read from the history of the top-level attribute ``key``."""

    key: str
    held: Core
    seconds: float


@dataclass(frozen=True)
class OrderMetric:
    metric: Literal["count", "total_spend", "average_value", "last_order", "first_order"]
    op: CountOp
    value: Atom
    since: float | None
    statuses: tuple[str, ...] | None  # None: every status except EXCLUDED_ORDER_STATUSES


@dataclass(frozen=True)
class Engaged:
    kind: Literal["received", "opened", "clicked", "bounced"]
    journey: str | None
    step: str | None
    template: str | None
    channel: str | None
    since: float | None


@dataclass(frozen=True)
class ConsentGranted:
    channel: str
    purpose: str


@dataclass(frozen=True)
class TopicChosen:
    """Subscribed to ``topic`` on ``channel``: a stored ``granted`` choice, or no choice and
    ``default`` (an opt-out topic)."""

    channel: str
    topic: str
    default: bool


@dataclass(frozen=True)
class Suppressed:
    channel: str


@dataclass(frozen=True)
class Member:
    """Currently an open member of a materialised segment."""

    segment: str


@dataclass(frozen=True)
class Bucket:
    """The contact's stable bucket (0..9999 for ``seed``) is in ``[low, high)``."""

    low: int
    high: int
    seed: str


Core: TypeAlias = (
    "All | AnyOf | Not | Const | Compare | EventCount | LastEvent | HasBeen | OrderMetric "
    "| Engaged | ConsentGranted | TopicChosen | Suppressed | Member | Bucket"
)

#: Order statuses that never count as a purchase unless a rule lists statuses itself.
EXCLUDED_ORDER_STATUSES = ("cancelled", "canceled", "refunded", "failed")
ADDRESS_COLUMN = {"email": "email", "sms": "phone"}

#: Looks a referenced segment up and returns its core (the loader guards against cycles).
Resolver = Callable[[str], "Core"]


def _no_refs(name: str) -> Core:
    raise LookupError(f"segment {name!r} is referenced but no segment catalog was given")


#: The default of a topic (True: opt-out, everyone is in until they leave); raises
#: ``InputError`` for an unknown topic.
TopicDefault = Callable[[str, str], bool]


def _no_topics(name: str, channel: str) -> bool:
    from tidings.errors import InputError

    raise InputError(
        f"topic: no subscription topic named {name!r}",
        hint="define it in channels/topics.yaml",
    )


def conj(parts: list[Core]) -> Core:
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _atom(value: object) -> Atom:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    assert isinstance(value, bool | int | float | Decimal | str | r.Ago)
    return value


def ops_to_core(target: Column | Json, ops: r.Ops) -> Core:
    """The comparisons of one operator mapping, all of which must hold."""
    parts: list[Core] = []
    for op in ops.used():
        value = getattr(ops, "in_" if op == "in" else op)
        match op:
            case "eq" | "gt" | "gte" | "lt" | "lte" | "contains" | "starts_with":
                parts.append(Compare(target, op, _atom(value)))
            case "ne":
                parts.append(Not(Compare(target, "eq", _atom(value))))
            case "in":
                parts.append(Compare(target, "in", tuple(_atom(v) for v in value)))
            case "not_in":
                parts.append(Not(Compare(target, "in", tuple(_atom(v) for v in value))))
            case "between":
                low, high = value
                parts.append(Compare(target, "gte", _atom(low)))
                parts.append(Compare(target, "lte", _atom(high)))
            case "exists":
                present = Compare(target, "exists", None)
                parts.append(present if value else Not(present))
            case "older_than":
                parts.append(Compare(target, "lt", r.Ago(seconds=value)))
            case "within":
                parts.append(Compare(target, "gte", r.Ago(seconds=value)))
                parts.append(Compare(target, "lte", r.Ago(seconds=0)))
            case _:
                raise AssertionError(op)
    return conj(parts)


def attribute_target(name: str) -> Column | Json:
    if name in r.COLUMN_KINDS:
        return Column(name)
    return Json("attributes", tuple(name.split(".")))


def _counts(ops: r.CountOps, make: Callable[[CountOp, int], Core]) -> Core:
    parts: list[Core] = []
    for op, n in ops.used():
        parts.append(Not(make("eq", n)) if op == "ne" else make(op, n))  # type: ignore[arg-type]
    return conj(parts)


def _where(where: dict[str, r.Ops]) -> tuple[Core, ...]:
    return tuple(
        ops_to_core(Json("properties", tuple(key.split("."))), ops) for key, ops in where.items()
    )


def _event(rule: r.EventRule) -> Core:
    where = _where(rule.where)

    def make(op: CountOp, n: int) -> Core:
        return EventCount(rule.event, where, rule.within, op, n)

    if rule.count is not None:
        return _counts(rule.count, make)
    return make("gte", 1) if rule.performed else Not(make("gte", 1))


def _orders(spec: r.OrdersSpec) -> Core:
    statuses = tuple(spec.status) if spec.status is not None else None
    parts: list[Core] = []

    def metric(name: str, op: str, value: object) -> Core:
        return OrderMetric(name, op, _atom(value), spec.within, statuses)  # type: ignore[arg-type]

    if spec.count is not None:
        parts.append(_counts(spec.count, lambda op, n: metric("count", op, n)))
    for name in ("total_spend", "average_value", "last_order", "first_order"):
        ops: r.Ops | None = getattr(spec, name)
        if ops is None:
            continue
        # Reuse the attribute rewriting on a placeholder target, then lift into metrics.
        parts.append(_lift(ops_to_core(Column(name), ops), partial(_metric_of, metric, name)))
    if not parts:
        parts.append(metric("count", "gte", 1))
    return conj(parts)


def _metric_of(
    metric: Callable[[str, str, object], Core], name: str, cmp: tuple[str, object]
) -> Core:
    return metric(name, *cmp)


def _lift(node: Core, make: Callable[[tuple[str, object]], Core]) -> Core:
    """Turn the ``Compare`` leaves of a rewritten operator mapping into order metrics."""
    match node:
        case Compare(op="lte", value=r.Ago(seconds=0)):
            return Const(True)  # "up to now": every order counted is placed before now
        case Compare(op=op, value=value) if op in ("eq", "gt", "gte", "lt", "lte"):
            return make((op, value))
        case Compare(op=op):
            raise ValueError(f"order metrics take eq, ne, gt, gte, lt, lte, between, not {op}")
        case Not(child):
            return Not(_lift(child, make))
        case All(children):
            return conj([x for x in (_lift(c, make) for c in children) if x != Const(True)])
        case _:
            raise AssertionError(node)


def _engaged(
    kind: Literal["received", "opened", "clicked", "bounced"], spec: r.EngagementSpec
) -> Core:
    return Engaged(kind, spec.journey, spec.step, spec.template, spec.channel, spec.within)


def _has_been(spec: r.HasBeenSpec) -> Core:
    path = tuple(spec.attribute.split("."))
    return HasBeen(path[0], ops_to_core(Json("attributes", path), spec), spec.for_)


def _reachable(channel: str) -> list[Core]:
    return [Compare(Column(ADDRESS_COLUMN[channel]), "exists", None), Not(Suppressed(channel))]


def to_core(rule: r.Rule, resolve: Resolver = _no_refs, topics: TopicDefault = _no_topics) -> Core:
    """Rewrite a surface rule into the core; ``resolve`` inlines referenced segments,
    ``topics`` tells a topic's default."""
    match rule:
        case r.AllRule():
            return (
                All(tuple(to_core(c, resolve, topics) for c in rule.all))
                if rule.all
                else Const(True)
            )
        case r.AnyRule():
            return AnyOf(tuple(to_core(c, resolve, topics) for c in rule.any))
        case r.NotRule():
            return Not(to_core(rule.not_, resolve, topics))
        case r.AttributeRule():
            return ops_to_core(attribute_target(rule.attribute), rule)
        case r.EventRule():
            return _event(rule)
        case r.LastEventRule():
            return LastEvent(rule.last_event, _where(rule.where), rule.within)
        case r.HasBeenRule():
            return _has_been(rule.has_been)
        case r.OrdersRule():
            return _orders(rule.orders)
        case r.ReceivedRule():
            return _engaged("received", rule.received)
        case r.OpenedRule():
            return _engaged("opened", rule.opened)
        case r.ClickedRule():
            return _engaged("clicked", rule.clicked)
        case r.BouncedRule():
            return _engaged("bounced", rule.bounced)
        case r.ConsentRule():
            spec = rule.consent
            return All((ConsentGranted(spec.channel, spec.purpose), *_reachable(spec.channel)))
        case r.TopicRule():
            t = rule.topic
            chosen = TopicChosen(t.channel, t.name, topics(t.name, t.channel))
            return All((ConsentGranted(t.channel, "marketing"), chosen, *_reachable(t.channel)))
        case r.ReachableRule():
            return All(tuple(_reachable(rule.reachable)))
        case r.SegmentRule():
            ref = rule.segment
            return Member(ref.name) if ref.materialised else resolve(ref.name)
        case r.SampleRule():
            return Bucket(0, round(rule.sample.percent * 100), rule.sample.seed)
        case r.SplitRule():
            return Bucket(*rule.split.bucket_range(), rule.split.seed)
        case r.ScoreRule():
            return conj([ops_to_core(Column(name), ops) for name, ops in rule.score.items()])
        case _:
            assert_never(rule)

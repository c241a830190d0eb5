"""The segment rule language: what a marketer writes in YAML (pydantic, STYLE.md 4).

A rule is a mapping whose *key* says what kind of rule it is (``all``, ``any``, ``not``,
``attribute``, ``has_been``, ``event``, ``last_event``, ``orders``,
``received``/``opened``/``clicked``/``bounced``, ``consent``, ``reachable``, ``segment``,
``sample``, ``split``, ``score``). That key is the tag of a
pydantic tagged union (a callable ``Discriminator``), so an unknown key is reported at its
place in the file. ``segments.core`` rewrites these surface rules into a small core that
``segments.compile`` turns into SQL.

>>> seg = Segment.model_validate(
...     {"name": "pro", "rule": {"all": [{"attribute": "plan", "eq": "pro"}]}}
... )
>>> type(seg.rule).__name__, type(seg.rule.all[0]).__name__
('AllRule', 'AttributeRule')
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    model_validator,
)

# -- durations ------------------------------------------------------------------------------

UNITS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
_ALIASES = {
    "sec": "second",
    "secs": "second",
    "s": "second",
    "min": "minute",
    "mins": "minute",
    "h": "hour",
    "hr": "hour",
    "hrs": "hour",
    "d": "day",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")
_AGO = re.compile(r"^\s*(.+?)\s+ago\s*$", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Seconds in ``"30 days"``, ``"2 weeks"``, ``"12 hours"``; a ValueError names the problem.

    >>> parse_duration("2 weeks")
    1209600.0
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"a duration is text such as '30 days', not {value!r}")
    if isinstance(value, int | float):
        raise ValueError(f"a duration needs a unit: write '{value} days' (or hours, weeks)")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"bad duration {value!r}: write a number and a unit, e.g. '30 days'")
    amount, unit = float(match.group(1)), match.group(2).lower()
    unit = _ALIASES.get(unit, unit)
    unit = unit[:-1] if unit.endswith("s") and unit[:-1] in UNITS else unit
    if unit not in UNITS:
        raise ValueError(
            f"bad duration {value!r}: unknown unit {match.group(2)!r} "
            f"(units: {', '.join(u + 's' for u in UNITS)})"
        )
    return amount * UNITS[unit]


def _duration(value: object) -> float:
    return parse_duration(value)


def format_duration(seconds: float) -> str:
    """The largest whole unit that says it: ``format_duration(172800) == "2 days"``.

    >>> parse_duration(format_duration(5400.0)) == 5400.0
    True
    """
    for unit in ("week", "day", "hour", "minute", "second"):
        size = UNITS[unit]
        if seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"


#: A window or age, kept in seconds: ``within: 30 days``; written back the same way.
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*\d+(\.\d+)?\s*[a-zA-Z]+\s*$",
            "description": "a number and a unit: seconds, minutes, hours, days, weeks, months "
            "(30 days), years (365 days)",
            "examples": ["30 days", "2 weeks", "12 hours"],
        }
    ),
]


class Ago(BaseModel):
    """A point in time relative to ``now`` (resolved when the rule is evaluated)."""

    model_config = ConfigDict(frozen=True)
    seconds: float


def _relative(value: object) -> object:
    """``"30 days ago"`` and ``"now"`` become :class:`Ago`; anything else is left alone."""
    if isinstance(value, str):
        if value.strip().lower() == "now":
            return Ago(seconds=0)
        match = _AGO.match(value)
        if match:
            return Ago(seconds=parse_duration(match.group(1)))
    return value


Scalar = Union[bool, int, float, Decimal, datetime, date, str]  # noqa: UP007 - order matters
Value = Annotated[Union[Ago, Scalar], BeforeValidator(_relative)]  # noqa: UP007

# -- operators shared by attributes, event properties, scores and order metrics ---------------

OPERATORS = (
    "eq",
    "ne",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "exists",
    "older_than",
    "within",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Ops(_Strict):
    """Comparison operators; more than one in a mapping means all of them must hold."""

    eq: Value | None = None
    ne: Value | None = None
    in_: list[Value] | None = Field(None, alias="in")
    not_in: list[Value] | None = None
    contains: str | int | float | None = None
    starts_with: str | None = None
    gt: Value | None = None
    gte: Value | None = None
    lt: Value | None = None
    lte: Value | None = None
    between: tuple[Value, Value] | None = None
    exists: bool | None = None
    older_than: Duration | None = Field(None, description="more than this long ago")
    within: Duration | None = Field(None, description="in the last ..., up to now")

    def used(self) -> list[str]:
        return [name for name in OPERATORS if getattr(self, _field(name)) is not None]

    @model_validator(mode="after")
    def _one_at_least(self) -> Ops:
        if not self.used():
            raise ValueError(f"give an operator: one of {', '.join(OPERATORS)}")
        return self


def _field(op: str) -> str:
    return "in_" if op == "in" else op


def _ops_or_eq(value: object) -> object:
    """``where: {category: shoes}`` is short for ``where: {category: {eq: shoes}}``."""
    return value if isinstance(value, dict | Ops) else {"eq": value}


OpsOrValue = Annotated[Ops, BeforeValidator(_ops_or_eq)]


#: Shown with a bad count (segments.loader adds it as the hint).
COUNT_HINT = "write count: 3 (at least 3) or count: {gte: 3}, with whole numbers"


def _whole(value: object) -> object:
    """Counts are whole numbers; anything else is refused (the loader adds COUNT_HINT)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"a count is a whole number, not {value!r}")
    if value < 0:
        raise ValueError(f"a count cannot be negative ({value})")
    return value


Count = Annotated[int, BeforeValidator(_whole)]


class CountOps(_Strict):
    eq: Count | None = None
    ne: Count | None = None
    gt: Count | None = None
    gte: Count | None = None
    lt: Count | None = None
    lte: Count | None = None
    between: tuple[Count, Count] | None = None

    def used(self) -> list[tuple[str, int]]:
        pairs: list[tuple[str, int]] = []
        for op in ("eq", "ne", "gt", "gte", "lt", "lte"):
            value = getattr(self, op)
            if value is not None:
                pairs.append((op, value))
        if self.between is not None:
            pairs += [("gte", self.between[0]), ("lte", self.between[1])]
        return pairs

    @model_validator(mode="after")
    def _one_at_least(self) -> CountOps:
        if not self.used():
            raise ValueError("give a comparison: eq, ne, gt, gte, lt, lte or between")
        return self


def _count(value: object) -> object:
    if isinstance(value, dict | CountOps):
        return value
    return {"gte": _whole(value)}


CountSpec = Annotated[CountOps, BeforeValidator(_count)]

# -- leaves ---------------------------------------------------------------------------------

#: Contact columns a rule may name directly; any other name is a key of ``attributes`` JSON.
COLUMN_KINDS: dict[str, Literal["text", "number", "time"]] = {
    "external_id": "text",
    "email": "text",
    "phone": "text",
    "first_name": "text",
    "last_name": "text",
    "locale": "text",
    "timezone": "text",
    "created_at": "time",
    "updated_at": "time",
    "churn_risk": "number",
    "clv_90d": "number",
    "rfm_segment": "text",
    "scores_model_version": "text",
    "scored_at": "time",
}
SCORES = ("churn_risk", "clv_90d", "rfm_segment", "scores_model_version", "scored_at")


class AttributeRule(Ops):
    """``{attribute: plan, eq: pro}``; dotted names reach into nested JSON: ``address.city``."""

    attribute: str = Field(min_length=1)

    @model_validator(mode="after")
    def _column_types(self) -> AttributeRule:
        check_column_values(self.attribute, self)
        return self


def _value_kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, datetime | date | Ago):
        return "time"
    return "text"


def check_column_values(column: str, ops: Ops) -> None:
    """A contact column is compared only with values of its own kind (text, number, time)."""
    kind = COLUMN_KINDS.get(column)
    if kind is None:
        return
    if kind != "text" and (ops.contains is not None or ops.starts_with is not None):
        raise ValueError(f"{column} holds a {kind}: contains/starts_with work on text")
    for op in ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between"):
        value = getattr(ops, _field(op))
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and _value_kind(item) != kind:
                example = {"time": "30 days ago or 2026-01-31", "number": "0.7", "text": "pro"}
                raise ValueError(
                    f"{column} holds a {kind}, so {op} needs a {kind} (e.g. {example[kind]}), "
                    f"not {item!r}"
                )
    if kind != "time" and (ops.older_than is not None or ops.within is not None):
        raise ValueError(f"{column} holds a {kind}: older_than/within work on dates")


def _event_name(value: object) -> object:
    """An event name, or a pattern where ``*`` stands for any text: ``checkout.*``."""
    if isinstance(value, str) and value.strip("*") == "":
        raise ValueError(
            f"{value!r} matches every event: name the event, or a pattern like 'checkout.*'"
        )
    return value


def event_name_matches(pattern: str, name: str) -> bool:
    """Whether an event ``name`` is matched by ``pattern`` as the SQL does (``*``: any text,
    case-sensitive, nothing else special); for code that routes single events to rules.

    >>> event_name_matches("checkout.*", "checkout.started"), event_name_matches("c?t*", "cat")
    (True, False)
    """
    if "*" not in pattern:
        return name == pattern
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, name, flags=re.DOTALL) is not None


#: An event name; ``*`` in it matches any text (``checkout.*``, ``*.failed``), case-sensitive.
EventName = Annotated[
    str,
    BeforeValidator(_event_name),
    Field(
        min_length=1,
        max_length=200,
        description="an event name; * matches any text: checkout.* counts every checkout event",
    ),
]


class EventRule(_Strict):
    """``{event: product.viewed, count: {gte: 3}, within: 30 days, where: {category: shoes}}``."""

    event: EventName
    performed: bool = True
    count: CountSpec | None = None
    within: Duration | None = None
    where: dict[str, OpsOrValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _count_or_performed(self) -> EventRule:
        if self.count is not None and not self.performed:
            raise ValueError("use either 'count' or 'performed: false', not both")
        return self


class LastEventRule(_Strict):
    """``{last_event: cart.updated, where: {status: open}}``: the contact's latest event of that
    name (or pattern) at or before now, and it matches ``where`` (and is inside ``within``)."""

    last_event: EventName
    within: Duration | None = None
    where: dict[str, OpsOrValue] = Field(default_factory=dict)


class OrdersSpec(_Strict):
    """RFM: ``{count: {gte: 2}, total_spend: {gte: 100}, last_order: {within: 90 days}}``.

    No metric at all means "has ordered" (count >= 1).
    """

    count: CountSpec | None = None
    total_spend: Ops | None = None
    average_value: Ops | None = None
    last_order: Ops | None = None
    first_order: Ops | None = None
    within: Duration | None = Field(None, description="only orders placed in this window")
    status: list[str] | None = Field(None, description="only orders with these statuses")


class OrdersRule(_Strict):
    orders: OrdersSpec


class EngagementSpec(_Strict):
    journey: str | None = None
    step: str | None = None
    template: str | None = Field(
        None, min_length=1, description="the template a message was rendered from: welcome.mjml"
    )
    channel: Literal["email", "sms"] | None = None
    within: Duration | None = None


def _engagement(value: object) -> object:
    if value is None or value == "any":
        return {}
    return {"journey": value} if isinstance(value, str) else value


Engagement = Annotated[EngagementSpec, BeforeValidator(_engagement)]


class ReceivedRule(_Strict):
    received: Engagement


class OpenedRule(_Strict):
    """Opens reported by machine proxies (``message_events.machine``) never count."""

    opened: Engagement


class ClickedRule(_Strict):
    clicked: Engagement


class BouncedRule(_Strict):
    bounced: Engagement


class ConsentSpec(_Strict):
    channel: Literal["email", "sms"]
    purpose: str = "marketing"


def _channel(value: object) -> object:
    return {"channel": value} if isinstance(value, str) else value


class ConsentRule(_Strict):
    """Consent granted for channel and purpose, an address on file, and not suppressed."""

    consent: Annotated[ConsentSpec, BeforeValidator(_channel)]


class TopicSpec(_Strict):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$", description="a topic of channels/topics.yaml"
    )
    channel: Literal["email", "sms"] = "email"


def _topic(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class TopicRule(_Strict):
    """Subscribed to a topic on a channel (their choice, else the topic's default) on top of
    granted marketing consent, an address on file and no suppression: exactly who a journey
    with that ``topic:`` can reach on the channel."""

    topic: Annotated[TopicSpec, BeforeValidator(_topic)]


class ReachableRule(_Strict):
    """An address on file for the channel that is not suppressed (consent not required)."""

    reachable: Literal["email", "sms"]


class SegmentRef(_Strict):
    name: str = Field(min_length=1)
    materialised: bool = Field(
        False, description="read current members from segment_memberships instead of inlining"
    )


def _ref(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class SegmentRule(_Strict):
    segment: Annotated[SegmentRef, BeforeValidator(_ref)]


class SampleSpec(_Strict):
    percent: float = Field(gt=0, le=100)
    seed: str = ""


class SampleRule(_Strict):
    """A stable random bucket: the same contacts for the same seed, on SQLite and PostgreSQL."""

    sample: SampleSpec


class SplitSpec(_Strict):
    """Named parts of one stable shuffle: ``{seed: spring, weights: {a: 50, b: 50}, part: a}``."""

    seed: str = ""
    weights: dict[str, float] = Field(
        min_length=1, description="part -> weight; parts take consecutive shares of the buckets"
    )
    part: str

    @model_validator(mode="after")
    def _known_part(self) -> SplitSpec:
        bad = [name for name, weight in self.weights.items() if not weight > 0]
        if bad:
            raise ValueError(f"weights must be positive: {', '.join(bad)}")
        if self.part not in self.weights:
            raise ValueError(f"part {self.part!r} is not one of {', '.join(self.weights)}")
        return self

    def bucket_range(self) -> tuple[int, int]:
        """The part's buckets, [low, high) of 0..9999, from the cumulative weights."""
        total = sum(self.weights.values())
        edges, running = [0], 0.0
        for weight in self.weights.values():
            running += weight
            edges.append(round(running / total * 10000))
        index = list(self.weights).index(self.part)
        return edges[index], edges[index + 1]


class SplitRule(_Strict):
    """One part of a split: the same contacts for the same seed and weights, in every store."""

    split: SplitSpec


class HasBeenSpec(Ops):
    """``{attribute: plan, eq: pro, for: 7 days}``: the condition has held, without a break,
    for at least this long (read from the attribute history)."""

    attribute: str = Field(min_length=1)
    for_: Duration = Field(alias="for", description="at least this long, up to now")

    @model_validator(mode="after")
    def _history_kept(self) -> HasBeenSpec:
        if self.attribute in COLUMN_KINDS:
            raise ValueError(
                f"{self.attribute} is a contact column, and only keys of attributes have a "
                "history: use a key of attributes"
            )
        if self.within is not None or self.older_than is not None:
            raise ValueError("within/older_than compare a date; has_been takes the time in 'for'")
        return self


class HasBeenRule(_Strict):
    has_been: HasBeenSpec


ScoreName = Literal["churn_risk", "clv_90d", "rfm_segment", "scores_model_version", "scored_at"]


class ScoreRule(_Strict):
    score: dict[ScoreName, OpsOrValue] = Field(min_length=1)

    @model_validator(mode="after")
    def _column_types(self) -> ScoreRule:
        for name, ops in self.score.items():
            check_column_values(name, ops)
        return self


class AllRule(_Strict):
    all: list[Rule]


class AnyRule(_Strict):
    any: list[Rule] = Field(min_length=1)


class NotRule(_Strict):
    not_: Rule = Field(alias="not")


#: Tag (the key that names the kind of rule) -> model.
KINDS: dict[str, type[BaseModel]] = {
    "all": AllRule,
    "any": AnyRule,
    "not": NotRule,
    "attribute": AttributeRule,
    "event": EventRule,
    "last_event": LastEventRule,
    "has_been": HasBeenRule,
    "orders": OrdersRule,
    "received": ReceivedRule,
    "opened": OpenedRule,
    "clicked": ClickedRule,
    "bounced": BouncedRule,
    "consent": ConsentRule,
    "topic": TopicRule,
    "reachable": ReachableRule,
    "segment": SegmentRule,
    "sample": SampleRule,
    "split": SplitRule,
    "score": ScoreRule,
}
_TAG_OF = {model: tag for tag, model in KINDS.items()}


def rule_kind(value: Any) -> str | None:
    """The tag of a rule: its model's, or the first key of a mapping that names a kind."""
    if isinstance(value, BaseModel):
        return _TAG_OF.get(type(value))
    if isinstance(value, dict):
        for key in value:
            if key in KINDS:
                return str(key)
    return None


Rule = Annotated[
    Annotated[AllRule, Tag("all")]
    | Annotated[AnyRule, Tag("any")]
    | Annotated[NotRule, Tag("not")]
    | Annotated[AttributeRule, Tag("attribute")]
    | Annotated[EventRule, Tag("event")]
    | Annotated[LastEventRule, Tag("last_event")]
    | Annotated[HasBeenRule, Tag("has_been")]
    | Annotated[OrdersRule, Tag("orders")]
    | Annotated[ReceivedRule, Tag("received")]
    | Annotated[OpenedRule, Tag("opened")]
    | Annotated[ClickedRule, Tag("clicked")]
    | Annotated[BouncedRule, Tag("bounced")]
    | Annotated[ConsentRule, Tag("consent")]
    | Annotated[TopicRule, Tag("topic")]
    | Annotated[ReachableRule, Tag("reachable")]
    | Annotated[SegmentRule, Tag("segment")]
    | Annotated[SampleRule, Tag("sample")]
    | Annotated[SplitRule, Tag("split")]
    | Annotated[ScoreRule, Tag("score")],
    Discriminator(
        rule_kind,
        custom_error_type="unknown_rule",
        custom_error_message="not a rule: start it with one of " + ", ".join(KINDS),
    ),
]

AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


class Segment(_Strict):
    """One segment definition (a ``segments/*.yaml`` file, or inline in a journey)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=200)
    description: str = ""
    live: bool = Field(
        False,
        description="Keep the membership up to date as events, attributes, orders and "
        "consents change (also when a journey is triggered by it or waits for it).",
    )
    rule: Rule

"""The journey language: what a marketer writes in ``journeys/*.yaml`` (pydantic, STYLE.md 4).

Triggers and steps are tagged unions on ``type``; the engine interprets them with an exhaustive
``match``. Conditions reuse the segment rule language (``segments.rules.Rule``), so anything a
segment can say, a branch can say. The JSON Schema editors use for completion is generated from
these same models (``tidings journey schema``).

>>> journey = Journey.model_validate({
...     "name": "welcome",
...     "trigger": {"type": "segment", "segment": "new_signups"},
...     "steps": [
...         {"id": "hello", "type": "email", "template": "welcome"},
...         {"id": "pause", "type": "wait", "duration": "2 days"},
...         {"id": "tip", "type": "email", "template": "tips"},
...     ],
... })
>>> [step.type for step in journey.steps], journey.steps[1].duration
(['email', 'wait', 'email'], 172800.0)
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tidings.segments.rules import Duration, Rule

STEP_ID = r"^[a-z][a-z0-9_]*$"
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _time_of_day(value: Any) -> Any:
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        match = _HHMM.match(value.strip())
        if not match:
            raise ValueError(f"bad time of day {value!r}: write 24-hour HH:MM, e.g. '09:30'")
        return time(int(match.group(1)), int(match.group(2)))
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 09:30 as 570
        raise ValueError(f"bad time of day {value!r}: quote it, e.g. '09:30'")
    return value


#: "HH:MM" in YAML (quoted, or YAML 1.1 reads it as a number), a ``time`` in Python.
TimeOfDay = Annotated[
    time,
    BeforeValidator(_time_of_day),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "pattern": "^([01]\\d|2[0-3]):[0-5]\\d$", "examples": ["09:00", "21:30"]}
    ),
]


# -- triggers ---------------------------------------------------------------------------------


class SegmentTrigger(_Strict):
    """Enrol contacts when they enter a segment (each entry is seen once)."""

    type: Literal["segment"]
    segment: str


class EventTrigger(_Strict):
    """Enrol the contact an event is about, e.g. ``order.shipped``; ``where`` filters its
    properties by equality. A transactional journey runs at once when the event arrives."""

    type: Literal["event"]
    event: str
    where: dict[str, Any] = Field(default_factory=dict)


class ScheduleTrigger(_Strict):
    """A broadcast: at each cron time (in ``timezone``) enrol the audience segment."""

    type: Literal["schedule"]
    cron: str
    timezone: str = "UTC"
    segment: str

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron {value!r} needs 5 fields (minute hour day month weekday), "
                "e.g. '0 9 * * 1' for Mondays at 09:00"
            )
        return value


class ApiTrigger(_Strict):
    """Enrol contacts named in an API or CLI call (``tidings journey trigger``)."""

    type: Literal["api"]


Trigger = Annotated[
    SegmentTrigger | EventTrigger | ScheduleTrigger | ApiTrigger, Field(discriminator="type")
]

# -- steps ------------------------------------------------------------------------------------


class _Step(_Strict):
    id: str = Field(pattern=STEP_ID, max_length=64, description="Unique within the journey.")
    next: str | None = Field(
        None, description="The step after this one (default: the next in the list)."
    )


class Variant(_Strict):
    """A variant; when the template defines a subject variant of the same name, it is used."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=32)
    weight: float = Field(gt=0)
    template: str | None = Field(None, description="Another template for this variant.")


FALLBACKS = ("best_observed", "keep_split")


class AutoWinner(_Strict):
    """Send a test share first; decide at a time or sample size; the rest gets the winner.

    The decision is taken once, at ``decide_after`` (from the experiment's first send) or as
    soon as every arm has ``min_recipients``, whichever comes first, by the experiment's
    ``rule``. A winner goes to the rest; an inconclusive or blocked test uses ``fallback``.
    """

    test_share: float = Field(
        gt=0,
        lt=100,
        description="Percent of the step's audience in the test (variants and holdout); the "
        "rest waits at the step for the winner.",
    )
    decide_after: Duration | None = Field(
        None, description="Decide this long after the experiment's first send, e.g. '4 hours'."
    )
    min_recipients: int | None = Field(
        None, ge=10, description="Decide as soon as every arm has this many recipients."
    )
    fallback: str | None = Field(
        None,
        description="When the test is inconclusive or blocked: a variant's name (default: "
        "the first, the control), best_observed (highest observed value, not significant), "
        "or keep_split (the rest is split by the weights, as the test was).",
    )

    @model_validator(mode="after")
    def _when(self) -> AutoWinner:
        if self.decide_after is None and self.min_recipients is None:
            raise ValueError(
                "auto_winner needs decide_after (e.g. '4 hours') or min_recipients "
                "(per arm), or both: the decision is taken at whichever comes first"
            )
        return self


class Experiment(_Strict):
    """An A/B test on a send step: contacts are assigned a variant by weight, stably."""

    name: str | None = Field(None, description="Default: <journey>.<step>.")
    variants: list[Variant] = Field(min_length=2)
    holdout: float = Field(
        0,
        ge=0,
        lt=100,
        description="Percent who get no message at this step, nor at any later send step of "
        "the journey (a holdout that receives mail measures nothing).",
    )
    metric: Literal["open", "click", "conversion", "revenue"] = Field(
        "click",
        description="open (unique human open), click (unique click), conversion or revenue "
        "(per recipient).",
    )
    rule: Literal["sequential", "fixed", "bayesian"] = Field(
        "sequential",
        description="sequential: mSPRT, valid under continuous peeking (default); fixed: a "
        "fixed-horizon test, valid at one look; bayesian: probability to be best >= threshold.",
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level (frequentist).")
    threshold: float = Field(
        0.95, gt=0.5, lt=1, description="Probability to be best that wins (rule: bayesian)."
    )
    auto_winner: AutoWinner | None = None

    @model_validator(mode="after")
    def _unique(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        fallback = self.auto_winner.fallback if self.auto_winner else None
        if fallback is not None and fallback not in (*names, *FALLBACKS):
            raise ValueError(
                f"auto_winner.fallback {fallback!r} is neither a variant ({', '.join(names)}) "
                f"nor one of {', '.join(FALLBACKS)}"
            )
        return self


class _SendStep(_Step):
    template: str
    purpose: Literal["marketing", "transactional"] | None = Field(
        None, description="Default: transactional in a transactional journey, else marketing."
    )
    context: dict[str, Any] = Field(
        default_factory=dict, description="Extra values for the template, e.g. an offer code."
    )
    experiment: Experiment | None = None


class EmailStep(_SendStep):
    type: Literal["email"]


class SmsStep(_SendStep):
    type: Literal["sms"]


class WaitStep(_Step):
    type: Literal["wait"]
    duration: Duration


class WaitUntilStep(_Step):
    """Wait until a time of day in the contact's timezone, optionally relative to a date
    attribute: ``attribute: renewal_date, offset: -3 days, at: '09:00'``."""

    type: Literal["wait_until"]
    at: TimeOfDay = Field(description="HH:MM in the contact's timezone")
    attribute: str | None = None
    offset: str | None = Field(None, description="e.g. '-3 days' before the attribute's date")

    @field_validator("offset")
    @classmethod
    def _offset(cls, value: str | None) -> str | None:
        if value is not None:
            from tidings.segments.rules import parse_duration

            parse_duration(value.lstrip("+-").strip())
        return value


class WaitForEventStep(_Step):
    """Wait for an event (e.g. ``order.placed``); on timeout go to ``on_timeout``."""

    type: Literal["wait_for_event"]
    event: str
    where: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration
    on_timeout: str


class WaitForSegmentStep(_Step):
    """Wait until the contact is in (``until: in``) or out of (``until: out``) a segment; goes
    on (``next``) as soon as it is, after ``timeout`` to ``on_timeout``. The segment is kept
    live while a journey waits for it, so a change is seen within seconds, not at the tick."""

    type: Literal["wait_for_segment"]
    segment: str
    until: Literal["in", "out"] = Field("in", description="in: until a member; out: until not")
    timeout: Duration
    on_timeout: str


class Branch(_Strict):
    when: Rule
    next: str


class BranchStep(_Step):
    """The first branch whose ``when`` (a segment rule, evaluated now) holds; else ``otherwise``."""

    type: Literal["branch"]
    branches: list[Branch] = Field(min_length=1)
    otherwise: str


class SplitPath(_Strict):
    weight: float = Field(gt=0)
    next: str


class SplitStep(_Step):
    """A stable random split: each contact takes one path, by weight."""

    type: Literal["split"]
    paths: list[SplitPath] = Field(min_length=2)


class UpdateContactStep(_Step):
    type: Literal["update_contact"]
    set: dict[str, Any] = Field(min_length=1, description="Attributes to set (Jinja in strings).")


class WebhookStep(_Step):
    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] = Field(default_factory=dict, description="JSON body (Jinja in strings).")


class ExitStep(_Step):
    type: Literal["exit"]


Step = Annotated[
    EmailStep
    | SmsStep
    | WaitStep
    | WaitUntilStep
    | WaitForEventStep
    | WaitForSegmentStep
    | BranchStep
    | SplitStep
    | UpdateContactStep
    | WebhookStep
    | ExitStep,
    Field(discriminator="type"),
]
SEND_STEPS = (EmailStep, SmsStep)
WAIT_STEPS = (WaitStep, WaitUntilStep, WaitForEventStep, WaitForSegmentStep)

# -- settings ---------------------------------------------------------------------------------


class ReentryAfter(_Strict):
    after: Duration


class Goal(_Strict):
    """Conversion: the event within ``within`` of entering; ``exit`` ends the journey then."""

    event: str
    within: Duration
    where: dict[str, Any] = Field(default_factory=dict)
    exit: bool = True


class FrequencyCap(_Strict):
    max: int = Field(ge=1)
    per: Duration


class QuietHours(_Strict):
    """No marketing sends between ``start`` and ``end`` in the contact's timezone."""

    start: TimeOfDay
    end: TimeOfDay


# Each setting below is a model or a plain value, told apart up front (a callable
# discriminator) so that a mistake is reported once, from the side the user meant.
Reentry = Annotated[
    Annotated[ReentryAfter, Tag("model")] | Annotated[Literal["never", "always"], Tag("word")],
    Discriminator(lambda v: "word" if isinstance(v, str) else "model"),
]
CapSetting = Annotated[
    Annotated[FrequencyCap, Tag("model")] | Annotated[Literal[False], Tag("off")],
    Discriminator(lambda v: "off" if v is False else "model"),
]
QuietSetting = Annotated[
    Annotated[QuietHours, Tag("model")] | Annotated[Literal[False], Tag("off")],
    Discriminator(lambda v: "off" if v is False else "model"),
]


class JourneySettings(_Strict):
    reentry: Reentry = Field("never", description="never, always, or {after: 30 days}")
    goal: Goal | None = None
    frequency_cap: CapSetting | None = Field(
        None, description="Overrides the global cap; false: no cap."
    )
    quiet_hours: QuietSetting | None = Field(
        None, description="Overrides the global quiet hours; false: none."
    )
    transactional: bool = Field(
        False, description="Bypasses frequency caps and quiet hours, never consent."
    )
    control_group: float = Field(
        0,
        ge=0,
        lt=100,
        description="Percent of contacts held out of the whole journey: they enter and move "
        "through it but receive nothing at any step, and their conversions are the baseline "
        "that the lift is measured against.",
    )
    max_enrollments_per_run: int | None = Field(None, ge=1)


def _address(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    from tidings.crm.normalize import FieldError
    from tidings.journeys.testsend import parse_address

    try:
        return parse_address(value)[1]
    except FieldError as exc:
        raise ValueError(str(exc)) from None


#: An email address, or a phone number in E.164 (``+4915123456789``); normalised.
Address = Annotated[
    str,
    BeforeValidator(_address),
    WithJsonSchema({"type": "string", "examples": ["seeds@shop.example", "+4915123456789"]}),
]


class Journey(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=100)
    description: str = ""
    topic: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="A subscription topic of channels/topics.yaml: the journey's marketing "
        "messages go only to contacts subscribed to it (on top of marketing consent).",
    )
    trigger: Trigger
    settings: JourneySettings = Field(default_factory=JourneySettings)
    seeds: list[Address] = Field(
        default_factory=list,
        description="Broadcasts (a schedule trigger) only: addresses that get a copy of every "
        "send step of each run, marked as a test and kept out of reports (email addresses for "
        "email steps, E.164 numbers for SMS steps).",
    )
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _topic_is_marketing(self) -> Journey:
        if self.topic is not None and self.settings.transactional:
            raise ValueError(
                f"topic {self.topic!r}: a transactional journey has no topic (topics narrow "
                "marketing only); remove topic or settings.transactional"
            )
        return self

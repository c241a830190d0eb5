"""Play a journey against a scenario: a timeline of contacts, events, opens, clicks and orders,
in a scratch store, with the real engine, on a simulated clock.

>>> played = simulate(  # doctest: +SKIP
...     settings, Path("journeys/welcome.yaml"), load_scenario(scenario)
... )
>>> played.contacts["ann"].sent  # doctest: +SKIP
[('hello', datetime(2026, 12, 1, 9, 0, tzinfo=UTC))]

A scenario is YAML (docs/journeys.md, "Test a journey before it ships"):

.. code-block:: yaml

    start: 2026-12-01T09:00:00Z     # the clock starts here (UTC unless an offset is given)
    days: 14                         # how long to play (default 30)
    tick: 1 hour                     # how often the engine ticks (default 1 hour)
    contacts:
      - {id: ann, email: ann@example.com, attributes: {signup_date: 2026-11-30}}
      - {id: bob, email: bob@example.com, consent: {email: revoked}}
    timeline:
      - {at: 2026-12-02T10:00:00Z, contact: ann, open: hello}
      - {at: 2026-12-03T12:00:00Z, contact: ann, order: {total: 49.90, currency: EUR}}
    expect:
      ann: {sent: [hello], reached: completed, goal: true}
      bob: {sent: [], reached: exited}

Nothing touches the project's store or a provider: the store is a temporary SQLite file and
every channel is the sandbox outbox. The journey's segments, templates and policy settings are
the project's, so what the scenario shows is what the journey will do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tidings.config import Settings
from tidings.crm.models import Consent, Contact, Conversion, Enrollment, Message, Order
from tidings.crm.models import Journey as JourneyRow
from tidings.crm.types import as_utc
from tidings.errors import InputError
from tidings.yamlfile import InputErrors, load_yaml, validation_errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Status = Literal["granted", "revoked"]


def _granted() -> dict[str, Status]:
    return {"email": "granted", "sms": "granted"}


def _json_dates(value: dict[str, Any]) -> dict[str, Any]:
    """YAML dates become ISO text, as an import stores them."""
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in value.items()}


class ScenarioContact(_Strict):
    id: str = Field(description="the contact's external id; the timeline and expect name it")
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    consent: dict[str, Status] = Field(
        default_factory=_granted,
        description="per channel (email, sms); default: both granted",
    )
    churn_risk: float | None = None
    clv_90d: float | None = None
    rfm_segment: str | None = None
    created_at: Annotated[datetime, AfterValidator(as_utc)] | None = None

    @field_validator("attributes")
    @classmethod
    def _dates(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _json_dates(value)


class ScenarioOrder(_Strict):
    total: Decimal
    currency: str = "EUR"
    status: str = "placed"
    order_id: str | None = None


class TimelineItem(_Strict):
    at: Annotated[datetime, AfterValidator(as_utc)]
    contact: str
    event: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    open: str | None = Field(None, description="a step id: the contact opens that step's email")
    click: str | None = Field(None, description="a step id: the contact clicks in that email")
    order: ScenarioOrder | None = None
    attributes: dict[str, Any] | None = Field(
        None, description="attributes set on the contact (merged; null removes one)"
    )

    @model_validator(mode="after")
    def _one_thing(self) -> TimelineItem:
        kinds = ("event", "open", "click", "order", "attributes")
        given = [k for k in kinds if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "each timeline item does one thing: event, open, click, order or attributes"
                + (f" (this one has {', '.join(given)})" if given else "")
            )
        return self


class Expectation(_Strict):
    sent: list[str] | None = Field(None, description="step ids of the messages sent, in order")
    reached: str | None = Field(
        None, description="the step the contact waits at, or completed / exited / not enrolled"
    )
    goal: bool | None = None


class Scenario(_Strict):
    start: Annotated[datetime, AfterValidator(as_utc)]
    days: float = Field(30, gt=0, le=366)
    tick: str = "1 hour"
    settings: dict[Literal["quiet_hours", "frequency_cap", "default_timezone"], str] = Field(
        default_factory=dict
    )
    contacts: list[ScenarioContact] = Field(min_length=1)
    timeline: list[TimelineItem] = Field(default_factory=list)
    expect: dict[str, Expectation] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_known(self) -> Scenario:
        known = {c.id for c in self.contacts}
        for where, name in [("timeline", i.contact) for i in self.timeline] + [
            ("expect", n) for n in self.expect
        ]:
            if name not in known:
                raise ValueError(f"{where} names contact {name!r}, which is not in contacts")
        return self


def load_scenario(path: Path) -> Scenario:
    """A scenario file, every problem with file:line and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the scenario: {exc}", location=str(path)) from None
    data = load_yaml(text, source=str(path))
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise InputErrors(validation_errors(exc, data, source=str(path))) from None


@dataclass
class ContactOutcome:
    sent: list[tuple[str, datetime]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)  # (step, reason)
    reached: str = "not enrolled"
    goal: datetime | None = None

    def actual(self) -> dict[str, Any]:
        return {
            "sent": [step for step, _ in self.sent],
            "reached": self.reached,
            "goal": self.goal is not None,
        }


@dataclass
class Outcome:
    journey: str
    contacts: dict[str, ContactOutcome]
    mismatches: list[tuple[str, str, Any, Any]]  # (contact, key, expected, actual)


def simulate(settings: Settings, file: Path, scenario: Scenario) -> Outcome:
    """Play ``scenario`` against the journey in ``file`` (see the module docstring)."""
    from tidings.crm.db import make_engine, upgrade
    from tidings.journeys.runtime import Runtime
    from tidings.segments.rules import parse_duration

    step = timedelta(seconds=parse_duration(scenario.tick))
    start = scenario.start
    end = start + timedelta(days=scenario.days)
    with tempfile.TemporaryDirectory(prefix="tidings-simulate-") as scratch:
        scratch_settings = settings.model_copy(
            update={
                "database_url": f"sqlite:///{Path(scratch) / 'simulate.db'}",
                "redis_url": None,
                "email_channel": "outbox",
                "sms_channel": "outbox",
                "outbox_dir": Path(scratch) / "outbox",
                "rate_limits": {},
                **{str(k): v for k, v in scenario.settings.items()},
            }
        )
        db = make_engine(scratch_settings.database_url)
        upgrade(db)
        runtime = Runtime.from_settings(scratch_settings, db=db)
        version = runtime.load(file)
        with Session(db) as session, session.begin():  # live from the scenario's start
            session.execute(
                update(JourneyRow).where(JourneyRow.id == version.id).values(created_at=start)
            )
        ids = _add_contacts(runtime, scenario.contacts, start)
        seen: dict[int, ContactOutcome] = {cid: ContactOutcome() for cid in ids.values()}
        sent_ids: set[int] = set()
        pending = sorted(scenario.timeline, key=lambda i: i.at)
        clock = start
        while clock <= end:
            while pending and pending[0].at <= clock:
                item = pending.pop(0)
                _apply(runtime, item, ids[item.contact], item.at, version.name)
                _record_sends(runtime, seen, sent_ids, item.at)
            _tick(runtime, version.name, clock)
            _record_sends(runtime, seen, sent_ids, clock)
            nxt = clock + step
            if pending and pending[0].at < nxt:
                nxt = max(pending[0].at, clock + timedelta(seconds=1))
            clock = nxt
        _final_states(runtime, seen, version.name)
        db.dispose()
    by_name = {name: seen[cid] for name, cid in ids.items()}
    return Outcome(version.name, by_name, _compare(scenario.expect, by_name))


def _add_contacts(runtime: Any, contacts: list[ScenarioContact], start: datetime) -> dict[str, int]:
    ids: dict[str, int] = {}
    with Session(runtime.db) as session, session.begin():
        for spec in contacts:
            created = spec.created_at if spec.created_at else start
            contact = Contact(
                external_id=spec.id,
                email=spec.email.strip().lower() if spec.email else None,
                phone=spec.phone,
                first_name=spec.first_name,
                timezone=spec.timezone,
                locale=spec.locale,
                attributes=spec.attributes,
                churn_risk=spec.churn_risk,
                clv_90d=Decimal(str(spec.clv_90d)) if spec.clv_90d is not None else None,
                rfm_segment=spec.rfm_segment,
                created_at=created,
                updated_at=created,
            )
            session.add(contact)
            session.flush()
            ids[spec.id] = contact.id
            for channel, status in spec.consent.items():
                session.add(
                    Consent(
                        contact_id=contact.id,
                        channel=channel,
                        purpose="marketing",
                        status=status,
                        source="scenario",
                        updated_at=created,
                    )
                )
    return ids


def _apply(runtime: Any, item: TimelineItem, contact_id: int, at: datetime, journey: str) -> None:
    from tidings.journeys.triggers import post_event

    if item.event is not None:
        post_event(
            runtime,
            contact_id=contact_id,
            name=item.event,
            properties=item.properties,
            occurred_at=at,
            now=at,
            source="scenario",
        )
    elif item.order is not None:
        order_id = item.order.order_id or f"SIM-{contact_id}-{int(at.timestamp())}"
        with Session(runtime.db) as session, session.begin():
            session.add(
                Order(
                    order_id=order_id,
                    contact_id=contact_id,
                    total=item.order.total,
                    currency=item.order.currency,
                    status=item.order.status,
                    placed_at=at,
                    updated_at=at,
                )
            )
        from tidings.segments.inputs import Change
        from tidings.segments.live import update as live_update

        live_update(runtime.engine, [contact_id], Change(orders=True), now=at)
        post_event(
            runtime,
            contact_id=contact_id,
            name="order.placed",
            properties={
                "order_id": order_id,
                "value": float(item.order.total),
                "currency": item.order.currency,
            },
            occurred_at=at,
            now=at,
            source="scenario",
        )
    elif item.attributes is not None:
        from tidings.segments.inputs import Change
        from tidings.segments.live import update as live_update

        with Session(runtime.db) as session, session.begin():
            contact = session.get(Contact, contact_id)
            assert contact is not None
            merged = {**(contact.attributes or {}), **_json_dates(item.attributes)}
            contact.attributes = {k: v for k, v in merged.items() if v is not None}
            contact.updated_at = at
        keys = frozenset(item.attributes)
        live_update(runtime.engine, [contact_id], Change.contact(keys), now=at)
    else:
        _engage(runtime, item, contact_id, at, journey)


def _engage(runtime: Any, item: TimelineItem, contact_id: int, at: datetime, journey: str) -> None:
    """An open or a click on the contact's message of that step, through the tracking path."""
    from tidings.web.items import TrackingHit
    from tidings.web.store import apply_items

    step_id = item.open or item.click
    kind = "open" if item.open else "click"
    with Session(runtime.db) as session:
        message_id = session.scalar(
            select(Message.id)
            .join(JourneyRow, JourneyRow.id == Message.journey_id)
            .where(
                Message.contact_id == contact_id,
                Message.step_id == step_id,
                Message.status == "sent",
                JourneyRow.name == journey,
            )
            .order_by(Message.id.desc())
            .limit(1)
        )
    if message_id is None:
        raise InputError(
            f"timeline at {at.isoformat()}: {item.contact} has no sent message of step "
            f"{step_id!r} to {kind}",
            hint="move the item after the send, or check the step id",
        )
    hit = TrackingHit(
        id=f"sim-{kind}-{message_id}-{int(at.timestamp())}",
        type=kind,
        message_id=str(message_id),
        link_index=0 if kind == "click" else None,
        url="https://example.com/simulated" if kind == "click" else None,
        machine=False,
        user_agent="tidings-simulate",
        method="GET",
        at=at.isoformat(),
    )
    apply_items(runtime.db, [hit])


def _tick(runtime: Any, name: str, clock: datetime) -> None:
    from tidings.journeys.running import tick_all

    tick_all(runtime, names=[name], now=clock)


def _record_sends(
    runtime: Any, seen: dict[int, ContactOutcome], done: set[int], clock: datetime
) -> None:
    with Session(runtime.db) as session:
        rows = session.execute(
            select(Message.id, Message.contact_id, Message.step_id, Message.status, Message.error)
            .where(Message.status.in_(["sent", "held", "failed"]), Message.id.not_in(done))
            .order_by(Message.id)
        ).all()
    for mid, contact_id, step_id, status, error in rows:
        done.add(mid)
        outcome = seen.get(contact_id)
        if outcome is None:
            continue
        if status == "sent":
            outcome.sent.append((step_id or "-", clock))
        else:
            outcome.held.append((step_id or "-", f"{status}: {error or ''}".strip()))


def _final_states(runtime: Any, seen: dict[int, ContactOutcome], name: str) -> None:
    with Session(runtime.db) as session:
        rows = session.execute(
            select(
                Enrollment.id,
                Enrollment.contact_id,
                Enrollment.status,
                Enrollment.step_id,
                Enrollment.exit_reason,
            )
            .join(JourneyRow, JourneyRow.id == Enrollment.journey_id)
            .where(JourneyRow.name == name)
            .order_by(Enrollment.id)
        ).all()
        keys = [f"goal:{r.id}" for r in rows]
        goals: dict[str, datetime] = {
            key: at
            for key, at in session.execute(
                select(Conversion.idempotency_key, Conversion.occurred_at).where(
                    Conversion.idempotency_key.in_(keys)
                )
            )
        }
    for enrollment_id, contact_id, status, step_id, reason in rows:
        outcome = seen.get(contact_id)
        if outcome is None:
            continue
        if status == "active":
            outcome.reached = step_id or status
        else:
            outcome.reached = f"{status}: {reason}" if status == "exited" and reason else status
        outcome.goal = goals.get(f"goal:{enrollment_id}", outcome.goal)


def _compare(
    expect: dict[str, Expectation], outcomes: dict[str, ContactOutcome]
) -> list[tuple[str, str, Any, Any]]:
    mismatches = []
    for name, expectation in expect.items():
        actual = outcomes[name].actual()
        for key, wanted in expectation.model_dump(exclude_none=True).items():
            if actual[key] != wanted:
                mismatches.append((name, key, wanted, actual[key]))
    return mismatches

"""A small seeded store for the report tests, and the facts it was built from.

``seed_store`` writes a journey (two versions) with an A/B experiment (10% holdout) on its
first step and a second step without one, contacts, enrollments, assignments, messages in
every status, message events from two sources (pixel and SendGrid, so opens are duplicated;
machine opens and clicks too), orders and conversions. It returns the plain Python facts, so
the tests can compute every number on their own, without SQL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert

from tidings.crm.models import (
    Assignment,
    Contact,
    Conversion,
    Enrollment,
    Experiment,
    Journey,
    Message,
    MessageEvent,
    Order,
)
from tidings.journeys.experiments import in_control, variant_for

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
EXPERIMENT = "promo.hello"
DEFINITION: dict[str, Any] = {
    "name": "promo",
    "trigger": {"type": "segment", "segment": "all"},
    "settings": {"goal": {"event": "order.placed", "within": "7 days"}},
    "steps": [
        {
            "id": "hello",
            "type": "email",
            "template": "hello",
            "experiment": {
                "variants": [{"name": "A", "weight": 50}, {"name": "B", "weight": 50}],
                "holdout": 10,
                "metric": "click",
            },
        },
        {"id": "wait", "type": "wait", "duration": "2 days"},
        {"id": "reminder", "type": "email", "template": "reminder"},
    ],
}
STATUSES = ("delivered", "delivered", "delivered", "sent", "bounced", "held", "queued", "failed")


@dataclass
class Msg:
    id: int
    contact: int
    enrollment: int
    step: str
    variant: str | None
    status: str
    sent_at: datetime | None
    events: list[tuple[str, bool, str, datetime]] = field(default_factory=list)


@dataclass
class Conv:
    id: int
    contact: int
    enrollment: int
    variant: str | None
    message: int | None
    value: Decimal
    at: datetime
    currency: str | None


@dataclass
class Facts:
    journey_ids: list[int]
    experiment_id: int
    assigned: dict[int, str]  # contact -> variant
    enrollments: dict[int, int]  # contact -> enrollment id
    messages: list[Msg]
    conversions: list[Conv]
    others: list[Msg] = field(default_factory=list)  # messages of another journey
    control: set[int] = field(default_factory=set)  # contacts in the journey's control group


def seed_store(
    db: Engine,
    *,
    contacts: int = 80,
    seed: int = 7,
    click_rates: dict[str, float] | None = None,
    control_group: float = 0,
) -> Facts:
    """``control_group``: the journey's control group percent (they get no message and their
    conversions carry the variant ``control``, as the engine records them)."""
    rng = random.Random(seed)
    rates = click_rates or {"A": 0.3, "B": 0.4}
    definition = {
        **DEFINITION,
        "settings": {**DEFINITION["settings"], "control_group": control_group},
    }
    with db.begin() as conn:
        ids = [
            conn.execute(
                insert(Journey)
                .values(name="promo", version_hash=h, definition=definition, created_at=T0)
                .returning(Journey.id)
            ).scalar_one()
            for h in ("v1", "v2")
        ]
        other = conn.execute(
            insert(Journey)
            .values(name="other", version_hash="o1", definition={"steps": []}, created_at=T0)
            .returning(Journey.id)
        ).scalar_one()
        exp_id = conn.execute(
            insert(Experiment)
            .values(
                name=EXPERIMENT,
                journey_name="promo",
                step_id="hello",
                variants={"A": {"weight": 50}, "B": {"weight": 50}},
                holdout_percent=10,
                created_at=T0,
            )
            .returning(Experiment.id)
        ).scalar_one()
        facts = Facts(ids, exp_id, {}, {}, [], [])
        mid = 0
        for i in range(contacts):
            cid = conn.execute(
                insert(Contact)
                .values(external_id=f"C{i}", email=f"c{i}@example.com", attributes={})
                .returning(Contact.id)
            ).scalar_one()
            version = ids[i % 2]
            eid = conn.execute(
                insert(Enrollment)
                .values(
                    journey_id=version,
                    contact_id=cid,
                    entry_key="once",
                    status="finished",
                    entered_at=T0,
                    context={},
                )
                .returning(Enrollment.id)
            ).scalar_one()
            facts.enrollments[cid] = eid
            variant = variant_for(EXPERIMENT, cid, [("A", 50), ("B", 50)], holdout=10)
            facts.assigned[cid] = variant
            conn.execute(
                insert(Assignment).values(
                    experiment_id=exp_id, contact_id=cid, variant=variant, assigned_at=T0
                )
            )
            sent: list[Msg] = []
            control = in_control("promo", cid, control_group)
            if control:
                facts.control.add(cid)
            if variant != "holdout" and not control:
                for step, var, at in (
                    ("hello", variant, T0),
                    ("reminder", None, T0 + timedelta(days=2)),
                ):
                    if step == "reminder" and rng.random() < 0.3:
                        continue
                    status = rng.choice(STATUSES)
                    is_sent = status in ("delivered", "sent", "bounced") or (
                        status == "failed" and rng.random() < 0.5
                    )
                    msg = Msg(0, cid, eid, step, var, status, at if is_sent else None)
                    msg.id = conn.execute(
                        insert(Message)
                        .values(
                            idempotency_key=f"m{mid}",
                            contact_id=cid,
                            journey_id=version,
                            enrollment_id=eid,
                            step_id=step,
                            variant=var,
                            channel="email",
                            to_address=f"c{i}@example.com",
                            status=status,
                            created_at=at,
                            sent_at=msg.sent_at,
                            meta={},
                        )
                        .returning(Message.id)
                    ).scalar_one()
                    mid += 1
                    if is_sent:
                        _events(rng, msg, rates.get(var or "", 0.2))
                        sent.append(msg)
                    facts.messages.append(msg)
            # a message of another journey: a touch for attribution, not in this report
            if rng.random() < 0.3:
                at = T0 + timedelta(hours=30)
                out = Msg(0, cid, 0, "news", None, "delivered", at)
                out.id = conn.execute(
                    insert(Message)
                    .values(
                        idempotency_key=f"m{mid}",
                        contact_id=cid,
                        journey_id=other,
                        step_id="news",
                        channel="email",
                        to_address=f"c{i}@example.com",
                        status="delivered",
                        created_at=at,
                        sent_at=at,
                        meta={},
                    )
                    .returning(Message.id)
                ).scalar_one()
                mid += 1
                _events(rng, out, 0.5)
                sent.append(out)
                facts.others.append(out)
            for m in sent:
                for n, (kind, machine, provider, when) in enumerate(m.events):
                    conn.execute(
                        insert(MessageEvent).values(
                            message_id=m.id,
                            provider=provider,
                            provider_event_id=f"{m.id}-{n}",
                            type=kind,
                            occurred_at=when,
                            machine=machine,
                            payload={},
                        )
                    )
            if rng.random() < (0.35 if variant == "B" else 0.25):
                at = T0 + timedelta(days=3, hours=rng.randrange(48))
                value = Decimal(rng.randrange(1000, 20000)) / 100
                currency = rng.choice(["USD", "EUR", None])
                order_id = None
                if currency is not None:
                    order_id = conn.execute(
                        insert(Order)
                        .values(
                            order_id=f"O{i}",
                            contact_id=cid,
                            total=value,
                            currency=currency,
                            status="placed",
                            placed_at=at,
                        )
                        .returning(Order.id)
                    ).scalar_one()
                own = [m for m in facts.messages if m.enrollment == eid and m.sent_at]
                last = max(own, key=lambda m: (m.sent_at or T0, m.id)).id if own else None
                conv_id = conn.execute(
                    insert(Conversion)
                    .values(
                        idempotency_key=f"goal:{eid}",
                        contact_id=cid,
                        kind="order" if order_id else "event",
                        goal="promo:order.placed",
                        order_id=order_id,
                        value=value,
                        currency=None,
                        occurred_at=at,
                        enrollment_id=eid,
                        journey_id=version,
                        variant="control" if control else variant,
                        message_id=last,
                    )
                    .returning(Conversion.id)
                ).scalar_one()
                facts.conversions.append(
                    Conv(
                        conv_id,
                        cid,
                        eid,
                        "control" if control else variant,
                        last,
                        value,
                        at,
                        currency,
                    )
                )
    return facts


def _events(rng: random.Random, msg: Msg, click_rate: float) -> None:
    assert msg.sent_at is not None
    at = msg.sent_at
    if msg.status == "delivered" or rng.random() < 0.2:
        msg.events.append(("delivered", False, "sendgrid", at + timedelta(minutes=1)))
    if msg.status == "bounced" and rng.random() < 0.7:
        msg.events.append(("bounce", False, "sendgrid", at + timedelta(minutes=1)))
    if rng.random() < 0.3:  # Apple privacy proxy
        msg.events.append(("open", True, "sendgrid", at + timedelta(minutes=2)))
    if rng.random() < 0.5:  # a human open, seen by our pixel and often by SendGrid too
        when = at + timedelta(hours=rng.randrange(1, 20))
        msg.events.append(("open", False, "pixel", when))
        if rng.random() < 0.6:
            msg.events.append(("open", False, "sendgrid", when + timedelta(seconds=5)))
        if rng.random() < 0.3:
            msg.events.append(("open", False, "pixel", when + timedelta(hours=5)))
    if rng.random() < 0.1:  # a link scanner
        msg.events.append(("click", True, "pixel", at + timedelta(minutes=3)))
    if rng.random() < click_rate:
        when = at + timedelta(hours=rng.randrange(1, 30))
        msg.events.append(("click", False, "pixel", when))
        if rng.random() < 0.4:
            msg.events.append(("click", False, "sendgrid", when + timedelta(seconds=3)))
    if rng.random() < 0.05:
        msg.events.append(("unsubscribe", False, "unsubscribe", at + timedelta(hours=3)))
    if rng.random() < 0.04:
        msg.events.append(("complaint", False, "sendgrid", at + timedelta(hours=4)))

"""Goals that count and holdouts that hold (issue: "close the loop").

Before: a conversion was recorded only while the contact still had a step due (a one-email
win-back journey recorded none; during a wait only when it ended), with no link to what earned
it; the holdout of an experiment only skipped its own step and then got the reminder.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.journeys.test_engine import T0, add_contacts, people
from tidings.config import Settings
from tidings.crm.models import Contact, Conversion, Enrollment, Message
from tidings.journeys.experiments import in_control, variant_for
from tidings.journeys.loader import load_text
from tidings.journeys.running import tick_all
from tidings.journeys.runtime import Runtime
from tidings.journeys.triggers import post_event


@pytest.fixture
def runtime(store_url: str, tmp_path: Path) -> Runtime:
    settings = Settings(
        database_url=store_url,
        outbox_dir=tmp_path / "outbox",
        secret_key="goals",
        frequency_cap="off",
        quiet_hours="off",
    )
    return Runtime.from_settings(settings)


def conversions(runtime: Runtime) -> list[tuple[str, str | None, str | None, int | None, Decimal]]:
    with Session(runtime.db) as session:
        return [
            (external_id, goal, variant, message_id, value)
            for external_id, goal, variant, message_id, value in session.execute(
                select(
                    Contact.external_id,
                    Conversion.goal,
                    Conversion.variant,
                    Conversion.message_id,
                    Conversion.value,
                )
                .join(Contact, Contact.id == Conversion.contact_id)
                .order_by(Contact.external_id)
            )
        ]


ONE_EMAIL = """
name: winback_once
trigger: {type: api}
settings:
  goal: {event: order.placed, within: 30 days}
steps:
  - {id: offer, type: email, template: welcome}
"""


def test_an_order_after_the_last_step_converts_once_with_what_earned_it(
    runtime: Runtime,
) -> None:
    ids = add_contacts(runtime.db, people(3))
    version = runtime.engine.register(load_text(ONE_EMAIL, source="w.yaml"))
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    tick_all(runtime, names=["winback_once"], now=T0)  # sent; the journey is complete
    with Session(runtime.db) as session:
        sent = dict(session.execute(select(Message.contact_id, Message.id)).tuples().all())
    for name, days in (("P0", 2), ("P1", 45)):  # P1: after the window
        post_event(
            runtime,
            contact_id=ids[name],
            name="order.placed",
            properties={"order_id": f"O-{name}", "value": "49.90", "currency": "EUR"},
            occurred_at=T0 + timedelta(days=days),
            now=T0 + timedelta(days=days),
        )
    tick_all(runtime, names=["winback_once"], now=T0 + timedelta(days=46))  # nothing twice
    assert conversions(runtime) == [
        ("P0", "winback_once:order.placed", None, sent[ids["P0"]], Decimal("49.90"))
    ]


def test_a_goal_during_a_wait_converts_at_once_and_ends_the_wait(runtime: Runtime) -> None:
    ids = add_contacts(runtime.db, people(1))
    version = runtime.engine.register(
        load_text(
            "name: cart\ntrigger: {type: api}\n"
            "settings: {goal: {event: order.placed, within: 3 days}}\n"
            "steps:\n  - {id: wait, type: wait, duration: 2 days}\n"
            "  - {id: reminder, type: email, template: welcome}\n",
            source="c.yaml",
        )
    )
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    tick_all(runtime, names=["cart"], now=T0)
    outcome = post_event(
        runtime,
        contact_id=ids["P0"],
        name="order.placed",
        properties={"value": 10},
        now=T0 + timedelta(hours=5),
    )
    assert outcome.converted == 1  # not when the wait ends: now
    with Session(runtime.db) as session:
        status, reason = session.execute(select(Enrollment.status, Enrollment.exit_reason)).one()
    assert (status, reason) == ("exited", "goal")
    tick_all(runtime, names=["cart"], now=T0 + timedelta(days=3))
    with Session(runtime.db) as session:
        assert session.scalar(select(Message.id)) is None  # no reminder after the goal


AB_REMINDER = """
name: welcome_ab
trigger: {type: api}
settings:
  goal: {event: order.placed, within: 14 days}
steps:
  - id: hello
    type: email
    template: welcome
    experiment: {variants: [{name: A, weight: 50}, {name: B, weight: 50}], holdout: 20}
  - {id: pause, type: wait, duration: 3 days}
  - {id: reminder, type: email, template: welcome}
"""


def test_the_holdout_receives_nothing_from_the_journey_and_still_converts(
    runtime: Runtime,
) -> None:
    ids = add_contacts(runtime.db, people(60))
    version = runtime.engine.register(load_text(AB_REMINDER, source="ab.yaml"))
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    tick_all(runtime, names=["welcome_ab"], now=T0)
    tick_all(runtime, names=["welcome_ab"], now=T0 + timedelta(days=3, minutes=1))
    weights = [("A", 50.0), ("B", 50.0)]
    held = {
        c
        for c in ids.values()
        if variant_for("welcome_ab.hello", c, weights, holdout=20) == "holdout"
    }
    assert 4 <= len(held) <= 24
    with Session(runtime.db) as session:
        reached = {c for (c,) in session.execute(select(Message.contact_id))}
    assert reached == set(ids.values()) - held  # neither hello nor the reminder
    one = min(held)
    post_event(runtime, contact_id=one, name="order.placed", now=T0 + timedelta(days=4))
    assert [(v, m) for _, _, v, m, _ in conversions(runtime)] == [("holdout", None)]


def test_a_journey_control_group_gets_nothing_and_is_measured(runtime: Runtime) -> None:
    ids = add_contacts(runtime.db, people(80))
    version = runtime.engine.register(
        load_text(
            "name: promo\ntrigger: {type: api}\n"
            "settings: {control_group: 25, goal: {event: order.placed, within: 7 days}}\n"
            "steps:\n  - {id: a, type: email, template: welcome}\n"
            "  - {id: b, type: email, template: welcome}\n",
            source="p.yaml",
        )
    )
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    summary = tick_all(runtime, names=["promo"], now=T0)[0]
    control = {c for c in ids.values() if in_control("promo", c, 25)}
    assert 8 <= len(control) <= 32 and summary["held"]["control"] == 2 * len(control)
    with Session(runtime.db) as session:
        reached = {c for (c,) in session.execute(select(Message.contact_id))}
    assert reached == set(ids.values()) - control
    for contact in (min(control), min(set(ids.values()) - control)):
        post_event(runtime, contact_id=contact, name="order.placed", now=T0 + timedelta(days=1))
    assert sorted(v or "-" for _, _, v, _, _ in conversions(runtime)) == ["-", "control"]


def test_imported_orders_are_events_and_convert_at_the_next_tick(
    runtime: Runtime, tmp_path: Path
) -> None:
    from tidings.crm.importer import import_orders
    from tidings.crm.models import Event

    ids = add_contacts(runtime.db, people(2))
    version = runtime.engine.register(load_text(ONE_EMAIL, source="w.yaml"))
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    tick_all(runtime, names=["winback_once"], now=T0)
    orders = tmp_path / "orders.csv"
    placed = (T0 + timedelta(days=1)).isoformat()
    orders.write_text(
        f"order_id,external_id,total,currency,status,placed_at\nO1,P0,80.00,EUR,paid,{placed}\n"
    )
    for _ in range(2):  # a re-import adds nothing
        import_orders(orders, engine=runtime.db)
    orders.write_text(orders.read_text().replace(",paid,", ",shipped,"))
    import_orders(orders, engine=runtime.db)
    with Session(runtime.db) as session:
        names = sorted(session.scalars(select(Event.name)))
    assert names == ["order.paid", "order.placed", "order.shipped"]
    tick_all(runtime, names=["winback_once"], now=T0 + timedelta(days=2))
    with Session(runtime.db) as session:
        kind, order_id, value = session.execute(
            select(Conversion.kind, Conversion.order_id, Conversion.value)
        ).one()
    assert (kind, value) == ("order", Decimal("80.00")) and order_id is not None


def test_plan_counts_only_what_it_would_do_and_shows_the_holdout(
    runtime: Runtime, tmp_path: Path
) -> None:
    from tidings.journeys.planning import plan_journey

    ids = add_contacts(runtime.db, people(40))
    file = tmp_path / "welcome_ab.yaml"
    file.write_text(AB_REMINDER.replace("trigger: {type: api}", "trigger: {type: event, event: x}"))
    for contact in ids.values():
        post_event(runtime, contact_id=contact, name="x", now=T0)
    first = {row.step: row for row in plan_journey(runtime, file, now=T0).steps}
    held = first["hello"].held.get("holdout", 0)
    assert held > 0 and first["hello"].sent + held == 40  # every entrant accounted for
    assert first["reminder"].held.get("holdout", 0) == held  # the holdout holds later too
    assert first["reminder"].sent == 40 - held
    version = runtime.engine.register(load_text(file.read_text(), source=str(file)))
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="real", now=T0)
    tick_all(runtime, names=["welcome_ab"], now=T0)  # the real run sends hello
    again = {row.step: row for row in plan_journey(runtime, file, now=T0).steps}
    assert again["hello"].sent == 0  # already sent: not "would send" again


def test_a_wait_for_an_event_starts_at_the_event_that_put_the_contact_there(
    runtime: Runtime,
) -> None:
    """The cart is abandoned at 10:00 and posted at 10:05; the order comes at 10:03, before any
    tick: the wait began at 10:00, so the order ends it (no reminder), and the 4 hours run from
    10:00, not from the first tick."""
    ids = add_contacts(runtime.db, people(2))
    runtime.engine.register(
        load_text(
            "name: cart\ntrigger: {type: event, event: cart.abandoned}\nsteps:\n"
            "  - {id: wait, type: wait_for_event, event: order.placed, timeout: 4 hours,\n"
            "     on_timeout: reminder, next: done}\n"
            "  - {id: reminder, type: email, template: welcome}\n  - {id: done, type: exit}\n",
            source="cart.yaml",
        )
    )
    for name in ("P0", "P1"):
        post_event(
            runtime,
            contact_id=ids[name],
            name="cart.abandoned",
            occurred_at=T0,
            now=T0 + timedelta(minutes=5),
        )
    post_event(
        runtime,
        contact_id=ids["P0"],
        name="order.placed",
        occurred_at=T0 + timedelta(minutes=3),
        now=T0 + timedelta(minutes=6),
    )
    tick_all(runtime, names=["cart"], now=T0 + timedelta(minutes=10))
    tick_all(runtime, names=["cart"], now=T0 + timedelta(hours=4, minutes=1))
    with Session(runtime.db) as session:
        sent = list(session.scalars(select(Message.contact_id).where(Message.status == "sent")))
    assert sent == [ids["P1"]]  # P0 ordered; P1 reminded 4 hours after abandoning, not later

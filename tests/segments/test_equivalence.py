"""Random data, random rules: SQLite and PostgreSQL give the same contacts for every rule.

The same contacts (random attributes of every JSON type, times with offsets and fractions of
a microsecond, empty texts), events with names and properties, messages and attribute history
go into both stores; several hundred random rules built from every operator are evaluated on
both, and must agree.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, Table, insert, select, update

from tidings.crm.db import make_engine, session_scope, upgrade
from tidings.crm.models import Contact, Event, Journey, Message, MessageEvent
from tidings.segments.loader import parse_segment
from tidings.segments.membership import evaluate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
contacts: Table = Contact.__table__  # type: ignore[assignment]
events: Table = Event.__table__  # type: ignore[assignment]
messages: Table = Message.__table__  # type: ignore[assignment]
message_events: Table = MessageEvent.__table__  # type: ignore[assignment]
journeys: Table = Journey.__table__  # type: ignore[assignment]

NAMES = ["cart.updated", "checkout.started", "checkout.completed", "product.viewed", "Cart.x"]
PLANS = ["free", "pro", "enterprise", "", "PRO"]
TEMPLATES = ["welcome", "reminder", "offer"]


def a_time(rng: random.Random) -> str:
    moment = NOW - timedelta(days=rng.uniform(-5, 60), microseconds=rng.randrange(1000))
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = rng.choice(["", ".5", f".{rng.randrange(1000):03d}", f".{moment.microsecond:06d}"])
    fraction = fraction or rng.choice(["", f".{rng.randrange(10**7):07d}"])
    zone = rng.choice(["", "Z", "+02:00", "-05:30"])
    return text + fraction + zone if rng.random() > 0.1 else moment.strftime("%Y-%m-%d")


def a_value(rng: random.Random, key: str) -> Any:
    match key:
        case "plan":
            return rng.choice(PLANS)
        case "age":
            return rng.choice([rng.randrange(15, 70), rng.uniform(15, 70), str(rng.randrange(70))])
        case "seen":
            return a_time(rng)
        case "tags":
            return rng.sample(["vip", "shoes", "b2b"], rng.randrange(3))
        case "flag":
            return rng.choice([True, False, None, "true"])
        case _:
            return {"city": rng.choice(["Oslo", "Rome", ""])}


def dataset(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    keys = ["plan", "age", "seen", "tags", "flag", "address"]
    people = []
    for i in range(120):
        attributes = {k: a_value(rng, k) for k in keys if rng.random() < 0.7}
        history = [
            (rng.uniform(1, 40), {**attributes, "plan": rng.choice(PLANS)})
            for _ in range(rng.randrange(3))
        ]
        people.append(
            {
                "external_id": f"p{i}" if rng.random() < 0.9 else None,
                "email": f"p{i}@example.com" if rng.random() < 0.8 else "",
                "attributes": attributes,
                "created": rng.uniform(0, 90),
                "history": sorted(history, key=lambda h: -h[0]),
                "events": [
                    (
                        rng.choice(NAMES),
                        {"status": rng.choice(["open", "closed", ""]), "n": rng.randrange(5)},
                        rng.choice([rng.uniform(-2, 40), 3.0]),
                    )
                    for _ in range(rng.randrange(6))
                ],
                "messages": [
                    (
                        rng.choice(TEMPLATES),
                        [
                            (rng.choice(["open", "click"]), rng.random() < 0.3, rng.uniform(0, 20))
                            for _ in range(rng.randrange(3))
                        ],
                    )
                    for _ in range(rng.randrange(3))
                ],
            }
        )
    return {"people": people}


def load(engine: Engine, data: dict[str, Any]) -> None:
    with engine.begin() as conn:
        journey = conn.execute(
            insert(journeys)
            .values(name="j", version_hash="v", definition={}, created_at=NOW)
            .returning(journeys.c.id)
        ).scalar_one()
        for n, p in enumerate(data["people"]):
            first = p["history"][0][1] if p["history"] else p["attributes"]
            born = NOW - timedelta(days=p["created"] + 50)
            cid = conn.execute(
                insert(contacts)
                .values(
                    external_id=p["external_id"],
                    email=p["email"],
                    attributes=first,
                    created_at=born,
                    updated_at=born,
                )
                .returning(contacts.c.id)
            ).scalar_one()
            for days, doc in [*p["history"][1:], (0.5, p["attributes"])]:
                conn.execute(
                    update(contacts)
                    .where(contacts.c.id == cid)
                    .values(attributes=doc, updated_at=NOW - timedelta(days=days))
                )
            for k, (name, props, days) in enumerate(p["events"]):
                conn.execute(
                    insert(events).values(
                        contact_id=cid,
                        name=name,
                        properties=props,
                        occurred_at=NOW - timedelta(days=days),
                        source="t",
                        idempotency_key=f"e{n}-{k}",
                    )
                )
            for k, (template, evs) in enumerate(p["messages"]):
                mid = conn.execute(
                    insert(messages)
                    .values(
                        idempotency_key=f"m{n}-{k}",
                        contact_id=cid,
                        journey_id=journey,
                        step_id="s",
                        channel="email",
                        template=template,
                        to_address="x",
                        status="delivered",
                        sent_at=NOW - timedelta(days=25),
                    )
                    .returning(messages.c.id)
                ).scalar_one()
                for j, (kind, machine, days) in enumerate(evs):
                    conn.execute(
                        insert(message_events).values(
                            message_id=mid,
                            provider="t",
                            provider_event_id=f"m{n}-{k}-{j}",
                            type=kind,
                            machine=machine,
                            occurred_at=NOW - timedelta(days=days),
                        )
                    )


def a_rule(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    kind = rng.choice(
        ["attribute", "has_been", "event", "last_event", "engaged", "sample", "split"]
        + (["all", "any", "not"] if depth < 2 else [])
    )
    match kind:
        case "all" | "any":
            return {kind: [a_rule(rng, depth + 1) for _ in range(rng.randrange(1, 3))]}
        case "not":
            return {"not": a_rule(rng, depth + 1)}
        case "attribute":
            return {"attribute": rng.choice(["plan", "age", "seen", "tags", "flag"]), **an_op(rng)}
        case "has_been":
            return {
                "has_been": {
                    "attribute": rng.choice(["plan", "address.city"]),
                    "for": f"{rng.randrange(1, 40)} days",
                    **rng.choice(
                        [
                            {"eq": rng.choice([*PLANS[:3], "Oslo"])},
                            {"in": ["pro", "enterprise"]},
                            {"exists": rng.random() < 0.5},
                            {"ne": "pro"},
                        ]
                    ),
                }
            }
        case "event" | "last_event":
            rule: dict[str, Any] = {
                kind: rng.choice([*NAMES, "checkout.*", "*.updated", "c*", "cart_updated*"])
            }
            if rng.random() < 0.6:
                rule["where"] = {"status": rng.choice(["open", "closed"])}
            if rng.random() < 0.4:
                rule["within"] = f"{rng.randrange(1, 20)} days"
            if kind == "event" and rng.random() < 0.4:
                rule["count"] = {rng.choice(["gte", "lt", "eq"]): rng.randrange(4)}
            return rule
        case "engaged":
            spec = {"template": rng.choice(TEMPLATES), "within": f"{rng.randrange(1, 20)} days"}
            return {rng.choice(["opened", "clicked"]): spec}
        case "sample":
            return {"sample": {"percent": rng.choice([5, 33.3, 50, 90]), "seed": "s"}}
        case _:
            weights = {"a": 1, "b": 2, "c": 3}
            return {"split": {"seed": "t", "weights": weights, "part": rng.choice("abc")}}


def an_op(rng: random.Random) -> dict[str, Any]:
    moment = NOW - timedelta(days=rng.uniform(0, 30), microseconds=rng.randrange(10**6))
    return rng.choice(
        [
            {"eq": rng.choice(PLANS)},
            {"exists": rng.random() < 0.5},
            {"gte": rng.randrange(15, 70)},
            {"eq": rng.randrange(15, 70)},
            {"gt": moment},
            {"lte": moment},
            {"within": f"{rng.randrange(1, 60)} days"},
            {"older_than": f"{rng.randrange(1, 60)} days"},
            {"contains": rng.choice(["vip", "b"])},
            {"eq": True},
            {"in": ["pro", "free"]},
        ]
    )


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: Any
) -> Iterator[tuple[Engine, Engine]]:
    data = dataset(20261130)
    lite = make_engine(f"sqlite:///{tmp_path_factory.mktemp('eq') / 'eq.db'}")
    upgrade(lite)
    url = postgres_server.new_database()
    pg = make_engine(url)
    load(lite, data)
    load(pg, data)
    yield lite, pg
    lite.dispose()
    pg.dispose()
    postgres_server.drop(url)


def members(engine: Engine, rule: dict[str, Any]) -> set[tuple[str | None, str | None]]:
    segment = parse_segment({"name": "r", "rule": rule})
    with session_scope(engine) as session:
        ids = evaluate(segment, session=session, now=NOW)
        rows = session.execute(
            select(contacts.c.external_id, contacts.c.email).where(contacts.c.id.in_(ids))
        ).all()
    return {(e, m) for e, m in rows}


@pytest.mark.parametrize("batch", range(4))
def test_random_rules_agree_on_both_stores(stores: tuple[Engine, Engine], batch: int) -> None:
    lite, pg = stores
    rng = random.Random(batch)
    nonempty = 0
    for _ in range(75):
        rule = a_rule(rng)
        in_lite, in_pg = members(lite, rule), members(pg, rule)
        assert in_lite == in_pg, (rule, in_lite ^ in_pg)
        nonempty += 0 < len(in_lite) < 120
    assert nonempty > 20  # the rules select something, and not everyone

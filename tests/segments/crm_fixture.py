"""A small hand-built CRM with known answers (see the table in test_rules.py).

``NOW`` is fixed; every time below is ``NOW`` minus some days, so each expected set can be
checked by reading this file.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from tidings.crm.db import session_scope
from tidings.crm.models import (
    Consent,
    Contact,
    Event,
    Journey,
    Message,
    MessageEvent,
    Order,
    Suppression,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


# external id: (email, phone, locale, attributes, created days ago, churn, clv, rfm)
CONTACTS: dict[str, tuple[Any, ...]] = {
    "c01": (
        "ann@example.com",
        None,
        "de",
        {
            "plan": "pro",
            "age": 34,
            "tags": ["vip", "shoes"],
            "signup": "2025-01-15",
            "newsletter": True,
            "address": {"city": "Berlin"},
        },
        400,
        0.8,
        "120.50",
        "champions",
    ),
    "c02": (
        "bob@example.com",
        None,
        "en",
        {
            "plan": "free",
            "age": 25,
            "tags": [],
            "signup": "2026-05-25",
            "seen": "2026-05-31T14:00:00.000999+02:00",
        },
        7,
        0.2,
        None,
        "new",
    ),
    "c03": (
        "Cat@Example.com",
        None,
        "en",
        {"plan": "pro", "age": "34", "newsletter": False},
        100,
        0.75,
        None,
        "at_risk",
    ),
    "c04": (
        None,
        "+4915112345678",
        "de",
        {"plan": "PRO", "tags": "vip-list"},
        40,
        None,
        None,
        None,
    ),
    "c05": (
        "eve@example.com",
        None,
        "fr",
        {"seen": "2026-05-31T12:00:00.0004Z"},
        800,
        None,
        None,
        None,
    ),
    "c06": (
        "fay@example.com",
        "+14155550100",
        "en",
        {
            "plan": "enterprise",
            "age": 51.5,
            "signup": "2026-05-20T10:00:00+02:00",
            "address": {"city": "Paris"},
        },
        200,
        0.5,
        "80",
        "loyal",
    ),
    "c07": (
        "gus@example.com",
        None,
        None,
        {"plan": "free", "age": 17, "vip": "true", "seen": "2026-05-31T12:00:00.0006"},
        3,
        None,
        None,
        None,
    ),
    "c08": (
        "hal@example.com",
        None,
        "de",
        {"plan": "pro", "age": 40, "score": None},
        60,
        0.9,
        "5",
        "hibernating",
    ),
    "c09": (
        "ivy@example.com",
        None,
        "en",
        {"plan": "free", "age": 29, "tags": ["shoes"], "seen": "2026-05-31T12:00:00.0005009Z"},
        30,
        None,
        None,
        None,
    ),
    "c10": ("", None, "en", {"plan": "free", "renewal": "2026-06-10"}, 10, None, None, None),
    "c11": (
        "kim@example.com",
        None,
        "es",
        {"plan": "pro", "age": 62, "nickname": "K"},
        500,
        None,
        None,
        None,
    ),
    "c12": (
        "lou@example.com",
        None,
        "en",
        {"plan": "trial", "age": 33, "nickname": ""},
        15,
        None,
        None,
        None,
    ),
}

# (contact, event name, properties, days ago)
EVENTS: list[tuple[str, str, dict[str, Any], float]] = [
    *[("c01", "product.viewed", {"category": "shoes", "price": 80}, d) for d in (1, 2, 3, 10)],
    ("c01", "checkout.started", {}, 5),
    *[("c02", "product.viewed", {"category": "shoes", "price": 30}, d) for d in (5, 6)],
    *[("c02", "product.viewed", {"category": "books"}, d) for d in (40, 41, 42)],
    ("c03", "product.viewed", {"category": "shoes", "price": "80"}, 2),
    *[("c06", "product.viewed", {"category": "shoes", "price": 120}, d) for d in (20, 25, 29)],
    ("c06", "checkout.started", {}, 2),
    ("c07", "signup.completed", {}, 3),
    ("c09", "product.viewed", {"category": "Shoes"}, 1),
    *[("c11", "product.viewed", {"category": "shoes"}, d) for d in (60, 61, 62)],
    ("c12", "product.viewed", {"category": "shoes"}, -1),  # in the future: never counted
    ("c06", "checkout.completed", {"status": "paid"}, 1),
    # the last cart.updated: c09 closed it, c12 left it open, c10's open one is in the future,
    # c11 has two at the same moment (the one recorded last, open, is the last)
    ("c09", "cart.updated", {"status": "open"}, 3),
    ("c09", "cart.updated", {"status": "closed"}, 1),
    ("c12", "cart.updated", {"status": "open"}, 2),
    ("c10", "cart.updated", {"status": "closed"}, 5),
    ("c10", "cart.updated", {"status": "open"}, -1),
    ("c11", "cart.updated", {"status": "closed"}, 4),
    ("c11", "cart.updated", {"status": "open"}, 4),
]

# (contact, total, status, days ago)
ORDERS: list[tuple[str, str, str, float]] = [
    ("c01", "100", "paid", 10),
    ("c01", "100", "paid", 50),
    ("c01", "50", "paid", 120),
    ("c02", "40", "paid", 200),
    ("c03", "500", "cancelled", 5),
    *[("c06", "20", "paid", d) for d in (100, 110, 120, 130, 140)],
    ("c08", "300", "paid", 400),
    ("c08", "10", "refunded", 30),
    ("c11", "60", "paid", 20),
    ("c11", "60", "pending", 15),
]

#: The template each step's messages were rendered from (a template may serve many steps).
TEMPLATES = {"hello": "welcome", "reminder": "reminder", "offer": "welcome"}

# (contact, journey, step, status, sent days ago, [(event type, days ago, machine)])
MESSAGES: list[tuple[str, str, str, str, float | None, list[tuple[str, float, bool]]]] = [
    ("c01", "welcome", "hello", "delivered", 5, [("open", 4, False)]),
    ("c03", "welcome", "hello", "delivered", 6, [("click", 5, False), ("open", 5, False)]),
    ("c05", "welcome", "hello", "delivered", 3, [("open", 3, True)]),
    ("c06", "welcome@v2", "hello", "bounced", 8, [("bounce", 8, False)]),
    ("c08", "winback", "offer", "delivered", 20, [("click", 19, True), ("open", 19, True)]),
    ("c11", "welcome", "reminder", "delivered", 40, [("open", 39, False), ("click", 39, False)]),
    ("c09", "welcome", "hello", "queued", None, []),
]

CONSENTS = [
    ("c01", "email", "marketing", "granted"),
    ("c02", "email", "marketing", "granted"),
    ("c03", "email", "marketing", "granted"),
    ("c04", "sms", "marketing", "granted"),
    ("c05", "email", "marketing", "revoked"),
    ("c06", "email", "marketing", "granted"),
    ("c06", "sms", "marketing", "granted"),
    ("c08", "email", "transactional", "granted"),
    ("c10", "email", "marketing", "granted"),
    ("c11", "email", "marketing", "granted"),
    ("c12", "email", "marketing", "granted"),
]
SUPPRESSIONS = [
    ("email", "bob@example.com", "bounce"),
    ("email", "cat@example.com", "complaint"),
    ("sms", "+14155550100", "stop"),
]


def build_crm(engine: Engine) -> dict[str, int]:
    """Insert the CRM; returns external id -> contact id."""
    ids: dict[str, int] = {}
    with session_scope(engine) as session:
        for ext, (email, phone, locale, attrs, created, churn, clv, rfm) in CONTACTS.items():
            contact = Contact(
                external_id=ext,
                email=email,
                phone=phone,
                locale=locale,
                attributes=attrs,
                created_at=ago(created),
                updated_at=ago(created),
                churn_risk=churn,
                clv_90d=Decimal(clv) if clv else None,
                rfm_segment=rfm,
                scores_model_version="test-1" if churn is not None else None,
                scored_at=ago(1) if churn is not None else None,
            )
            session.add(contact)
            session.flush()
            ids[ext] = contact.id
        journeys: dict[str, int] = {}
        for key, version in [("welcome", "v1"), ("welcome@v2", "v2"), ("winback", "v1")]:
            journey = Journey(name=key.split("@")[0], version_hash=version, definition={})
            session.add(journey)
            session.flush()
            journeys[key] = journey.id
        for n, (ext, name, props, days) in enumerate(EVENTS):
            session.add(
                Event(
                    contact_id=ids[ext],
                    name=name,
                    properties=props,
                    occurred_at=ago(days),
                    source="test",
                    idempotency_key=f"e{n}",
                )
            )
        for n, (ext, total, status, days) in enumerate(ORDERS):
            session.add(
                Order(
                    order_id=f"o{n}",
                    contact_id=ids[ext],
                    total=Decimal(total),
                    currency="EUR",
                    status=status,
                    placed_at=ago(days),
                )
            )
        for n, (ext, journey_key, step, status, sent, evs) in enumerate(MESSAGES):
            message = Message(
                idempotency_key=f"m{n}",
                contact_id=ids[ext],
                journey_id=journeys[journey_key],
                step_id=step,
                template=TEMPLATES[step],
                channel="email",
                to_address=CONTACTS[ext][0] or "x",
                status=status,
                sent_at=ago(sent) if sent is not None else None,
            )
            session.add(message)
            session.flush()
            for k, (kind, days, machine) in enumerate(evs):
                session.add(
                    MessageEvent(
                        message_id=message.id,
                        provider="test",
                        provider_event_id=f"m{n}-{k}",
                        type=kind,
                        occurred_at=ago(days),
                        machine=machine,
                    )
                )
        for ext, channel, purpose, status in CONSENTS:
            session.add(
                Consent(
                    contact_id=ids[ext],
                    channel=channel,
                    purpose=purpose,
                    status=status,
                    source="test",
                )
            )
        for channel, address, reason in SUPPRESSIONS:
            session.add(Suppression(channel=channel, address=address, reason=reason, source="test"))
    return ids

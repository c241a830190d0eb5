"""A small synthetic store where the truth is known: steady buyers, lapsed buyers, one-offs.

* ``steady``: an order every 7-12 days from a year ago up to the cut-off, and after it;
* ``lapsed``: ordered often until about 200 days before the cut-off, then never again;
* ``oneoff``: one order 100-300 days before the cut-off, nothing after;
* ``prospect``: no orders at all.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, insert, select

from tidings.crm.models import Contact, Event, Order

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
KINDS = ("steady", "lapsed", "oneoff", "prospect")


def build(engine: Engine, *, per_kind: int = 40, seed: int = 1, until: datetime = AS_OF) -> None:
    """Contacts ``<kind>-<i>`` (attribute ``kind``) with orders up to ``until + 120 days``."""
    rng = random.Random(seed)
    created = until - timedelta(days=400)
    contacts = [
        {
            "external_id": f"{kind}-{i}",
            "email": f"{kind}{i}@example.com",
            "attributes": {"kind": kind},
            "created_at": created,
            "updated_at": created,
        }
        for kind in KINDS
        for i in range(per_kind)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Contact), contacts)
        ids = {str(e): int(i) for e, i in conn.execute(select(Contact.external_id, Contact.id))}
    orders: list[dict[str, object]] = []
    events: list[dict[str, object]] = []

    def order(external_id: str, when: datetime, total: float) -> None:
        n = len(orders)
        orders.append(
            {
                "order_id": f"o{n}",
                "contact_id": ids[external_id],
                "total": Decimal(f"{total:.2f}"),
                "currency": "USD",
                "status": "completed",
                "placed_at": when,
            }
        )

    end = until + timedelta(days=120)
    for i in range(per_kind):
        when = until - timedelta(days=365 - rng.randint(0, 10))
        while when <= end:
            order(f"steady-{i}", when, rng.uniform(40, 120))
            events.append(
                {
                    "contact_id": ids[f"steady-{i}"],
                    "name": "product.viewed",
                    "occurred_at": when - timedelta(hours=2),
                    "source": "test",
                    "idempotency_key": f"ev{len(events)}",
                }
            )
            when += timedelta(days=rng.randint(7, 12), hours=rng.randint(0, 20))
        when = until - timedelta(days=380 - rng.randint(0, 10))
        stop = until - timedelta(days=200 + rng.randint(0, 30))
        while when <= stop:
            order(f"lapsed-{i}", when, rng.uniform(20, 80))
            when += timedelta(days=rng.randint(8, 20))
        order(f"oneoff-{i}", until - timedelta(days=rng.randint(100, 300)), rng.uniform(10, 50))
    with engine.begin() as conn:
        conn.execute(insert(Order), orders)
        conn.execute(insert(Event), events)

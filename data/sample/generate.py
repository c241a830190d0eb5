"""Regenerate the sample CRM data shipped for `make demo` (deterministic: same files each run).

    .venv/bin/python data/sample/generate.py

Writes contacts.csv (with a few deliberate problems a real export has: a bad email, an unknown
time zone, a duplicate email, a near-duplicate person with a phone typo), events.csv and
orders.csv next to this file.
"""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
FIRST = "Ava Ben Chloe Dev Emma Finn Grace Hugo Isla Jack Kira Liam Maya Noah Olga Paul Sam"
FIRST_NAMES = FIRST.split()
LAST = "Smith Jones Brown Garcia Müller Rossi Dubois Nowak Silva Kim Chen Patel Novak Berg"
LAST_NAMES = LAST.split()
PLACES = [
    ("en_US", "America/New_York", "+1 212 555 {:04d}"),
    ("en_US", "America/Los_Angeles", "(415) 555-{:04d}"),
    ("de_DE", "Europe/Berlin", "+49 30 1234{:04d}"),
    ("en_GB", "Europe/London", "+44 20 7946 {:04d}"),
    ("fr_FR", "Europe/Paris", "+33 1 42 68 {:02d} {:02d}"),
]
PLANS = ["free", "free", "free", "pro", "pro", "enterprise"]
START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)  # no activity after the data was "exported"
SPAN = (END - START).days


def main() -> None:
    rng = random.Random(7)
    contacts = []
    for n in range(1, 301):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        locale, tz, phone_format = rng.choice(PLACES)
        digits = rng.randrange(10000)
        phone = (
            phone_format.format(digits // 100, digits % 100)
            if phone_format.count("{") == 2
            else phone_format.format(digits)
        )
        contacts.append(
            {
                "external_id": f"C{n:04d}",
                "email": f"{first}.{last}{n}@example.com".lower().replace("ü", "ue"),
                "phone": phone if rng.random() < 0.8 else "",
                "first_name": first,
                "last_name": last,
                "locale": locale if rng.random() < 0.9 else "",
                "timezone": tz,
                "consent_email": rng.choice(["yes", "yes", "yes", "no", ""]),
                "consent_sms": rng.choice(["yes", "no", "", ""]),
                "plan": rng.choice(PLANS),
                # spread over the whole period, up to the export day (one draw, as before)
                "signup_date": (START + timedelta(days=rng.randrange(600) * SPAN // 600))
                .date()
                .isoformat(),
                "zip": f"{rng.randrange(100000):05d}",
            }
        )
    # What a real export brings along:
    contacts[10]["email"] = "not-an-email"
    contacts[20]["timezone"] = "Europe/Atlantis"
    contacts[31]["email"] = contacts[30]["email"].upper()  # same person, two ids
    twin = dict(contacts[40], external_id="C9001", email="second.address@example.com")
    twin["first_name"] = twin["first_name"] + "a"  # a typo in the name ...
    twin["phone"] = "+1 212 555 0100"
    contacts[40]["phone"] = "+1 212 555 0101"  # ... and one digit apart in the phone
    contacts.append(twin)
    with (HERE / "contacts.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(contacts[0]))
        writer.writeheader()
        writer.writerows(contacts)

    good = [c for i, c in enumerate(contacts) if i not in (10, 20)]
    events: list[dict[str, str]] = []
    orders: list[dict[str, str]] = []
    for c in good:
        when = START + timedelta(days=rng.randrange(600), minutes=rng.randrange(1440))
        for _ in range(rng.randrange(0, 12)):
            when += timedelta(hours=rng.randrange(1, 400))
            if when + timedelta(hours=1) >= END:
                break
            name = rng.choice(["product.viewed", "product.viewed", "cart.updated", "page.viewed"])
            events.append(
                {
                    "external_id": c["external_id"],
                    "name": name,
                    "occurred_at": when.isoformat().replace("+00:00", "Z"),
                    "sku": f"SKU-{rng.randrange(1, 40):03d}",
                }
            )
            if name == "cart.updated" and rng.random() < 0.5:
                total = round(rng.uniform(9, 240), 2)
                oid = f"O{len(orders) + 1:05d}"
                orders.append(
                    {
                        "order_id": oid,
                        "external_id": c["external_id"],
                        "total": f"{total:.2f}",
                        "currency": "EUR" if c["timezone"].startswith("Europe") else "USD",
                        "status": rng.choice(["delivered", "delivered", "shipped", "refunded"]),
                        "placed_at": (when + timedelta(minutes=20)).isoformat(),
                    }
                )
                events.append(
                    {
                        "external_id": c["external_id"],
                        "name": "order.placed",
                        "occurred_at": (when + timedelta(minutes=20)).isoformat(),
                        "sku": oid,
                    }
                )
    for name, rows in (("events.csv", events), ("orders.csv", orders)):
        with (HERE / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()

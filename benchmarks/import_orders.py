"""Order import: rows/s and peak memory on a realistic file, against a COPY of the same rows.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/import_orders.py \\
        [--rows 1000000] [--contacts 200000] [--url postgresql+psycopg://...]

For each size (a tenth of --rows, then --rows) a fresh PostgreSQL database is seeded (COPY)
with --contacts contacts and the orders that a tenth of the file's rows update, and
``tidings orders import FILE --json`` runs in its own process (wall time, peak RSS of its
largest process). The file: 88% new orders (placed, paid or shipped; a total, a currency, a
time and a sales channel), 10% status changes of stored orders (placed -> shipped), 2% bad
rows (an unknown currency or status), which must all be rejected. Orders are also events:
each new order must have its ``order.placed`` event, one past placed its ``order.<status>``
too, and each status change its ``order.shipped``; the report's counts, the orders and these
events in the store are checked before any speed is printed, and a second import of the same
file must change nothing. The baseline, in the same run: the accepted orders COPYed into the
orders table of a database seeded with the same contacts. Goals: >= 25,000 rows/s and >= 0.5
of COPY at --rows, flat rows/s and peak RSS < 500 MB; the last lines say which were missed.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.databases import Database
from benchmarks.import_contacts import (
    Expected,
    check,
    copy_line,
    copy_lines,
    run,
    sql,
)
from benchmarks.import_events import CONTACTS
from benchmarks.import_events import seed as seed_contacts

ORDER_COLUMNS = "order_id, contact_id, total, currency, status, placed_at, updated_at, attributes"
STATUSES = ["placed", "placed", "placed", "paid", "shipped"]


def seed(url: str, expected: Expected) -> None:
    """The contacts, and the orders the file updates (placed, with their order.placed event)."""
    seed_contacts(url, expected)
    now = datetime.now(UTC).isoformat()

    def lines() -> Iterator[str]:
        for order_id, contact_id in expected.seeded_orders:
            values = (
                order_id,
                contact_id,
                "10.00",
                "EUR",
                "placed",
                now,
                now,
                '{"channel": "web"}',
            )
            yield copy_line(values)

    copy_lines(url, "orders", ORDER_COLUMNS, lines())
    with Database.connect(url) as conn:
        conn.execute(
            "INSERT INTO events (contact_id, name, properties, occurred_at, received_at, "
            "source, idempotency_key) SELECT contact_id, 'order.placed', '{}', placed_at, "
            "now(), 'orders', 'order:' || order_id || ':placed' FROM orders"
        )
        conn.execute("ANALYZE")


def write_files(path: Path, copy_path: Path, rows: int, contacts: int = CONTACTS) -> Expected:
    rnd = random.Random(5)
    expected = Expected(rows=rows)
    expected.seeded_count = contacts
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC).isoformat()
    with path.open("w", encoding="utf-8") as out, copy_path.open("w", encoding="utf-8") as base:
        out.write("order_id,external_id,email,total,currency,status,placed_at,channel\n")
        for i in range(rows):
            k = rnd.randrange(contacts)
            ext = f"C{k:08d}"
            total = f"{rnd.randrange(500, 50000) / 100:.2f}"
            currency = ("EUR", "usd", "GBP")[i % 3]
            status = STATUSES[i % len(STATUSES)]
            at = (start + timedelta(minutes=i)).isoformat()
            channel = ("web", "app", "store")[i % 3]
            order_id = f"O{i:09d}"
            if i % 50 == 7:  # a bad row
                expected.bad += 1
                if (i // 50) % 2:
                    currency = "EUD"
                else:
                    status = "lost"
            elif i % 10 == 3:  # a stored order (placed) is shipped
                order_id = f"S{i:09d}"
                status = "shipped"
                expected.seeded_orders.append((order_id, k + 1))
                expected.updated += 1
                expected.events += 1
            else:
                expected.new += 1
                expected.events += 1 + (status not in ("placed", "pending"))
            if i % 50 != 7:
                values = (
                    order_id,
                    k + 1,
                    total,
                    currency.upper(),
                    status,
                    at,
                    now,
                    f'{{"channel": "{channel}"}}',
                )
                base.write(copy_line(values))
            out.write(f"{order_id},{ext},,{total},{currency},{status},{at},{channel}\n")
    return expected


def verify(url: str, report: dict[str, Any], expected: Expected) -> None:
    seeded = len(expected.seeded_orders)
    check("rows read", report["rows"], expected.rows)
    check("rows rejected", report["rejected"], expected.bad)
    check("orders inserted", report["inserted"], expected.new)
    check("orders updated", report["updated"], expected.updated)
    check("orders in the store", sql(url, "SELECT count(*) FROM orders"), seeded + expected.new)
    check(
        "shipped orders",
        sql(url, "SELECT count(*) FROM orders WHERE status = 'shipped'"),
        expected.updated + _shipped_new(expected),
    )
    check(
        "order events",
        sql(url, "SELECT count(*) FROM events WHERE source = 'orders'"),
        seeded + expected.events,
    )


def _shipped_new(expected: Expected) -> int:
    return sum(
        1
        for i in range(expected.rows)
        if i % 50 != 7 and i % 10 != 3 and STATUSES[i % len(STATUSES)] == "shipped"
    )


if __name__ == "__main__":
    run(
        "orders",
        rows=1_000_000,
        rate=25_000,
        prepare=write_files,
        seed=seed,
        verify=verify,
        table="orders",
        columns=ORDER_COLUMNS,
        seed_baseline=seed_contacts,
        contacts=CONTACTS,
    )

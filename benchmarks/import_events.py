"""Event import: rows/s and peak memory on a realistic file, against a COPY of the same rows.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/import_events.py \\
        [--rows 10000000] [--contacts 200000] [--url postgresql+psycopg://...]

For each size (a tenth of --rows, then --rows) a fresh PostgreSQL database is seeded (COPY)
with --contacts contacts, and ``tidings events import FILE --json`` runs in its own process
(wall time, peak RSS of its largest process). The file: events of five names, nine in ten
naming their contact by external_id and one in ten by email written in another case, an ISO
time with an offset and two or three properties each; 1% bad rows (half with an unreadable
time, half naming no stored contact), which must all be rejected. Before any speed is printed
the report's counts and the events in the store are checked; then the same file is imported
again and must change nothing. The baseline, in the same run: the accepted events (contact
ids resolved, keys made) COPYed into the events table of a database seeded the same way.
Goals: >= 50,000 rows/s and >= 0.5 of COPY at --rows, rows/s at --rows within 10% of a tenth
of it, peak RSS < 500 MB; the last lines say which were missed (exit 1).
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.databases import Database
from benchmarks.import_contacts import (
    COPY_COLUMNS,
    Expected,
    check,
    copy_line,
    copy_lines,
    run,
    sql,
)

NAMES = ["product.viewed", "product.viewed", "cart.updated", "page.viewed", "search"]
EVENT_COLUMNS = "contact_id, name, properties, occurred_at, received_at, source, idempotency_key"
CONTACTS = 200_000


def seed(url: str, expected: Expected) -> None:
    """The contacts events point at: ids 1..N in a fresh database."""
    now = datetime.now(UTC).isoformat()

    def lines() -> Iterator[str]:
        for k in range(expected.seeded_count):
            values = (f"C{k:08d}", f"person{k}@example.net", None, "Pat", "Doe", "en_US", None)
            yield copy_line((*values, "{}", now, now))

    copy_lines(url, "contacts", COPY_COLUMNS, lines())
    with Database.connect(url) as conn:
        conn.execute("ANALYZE contacts")


def write_files(path: Path, copy_path: Path, rows: int, contacts: int = CONTACTS) -> Expected:
    rnd = random.Random(11)
    expected = Expected(rows=rows)
    expected.seeded_count = contacts
    start = datetime(2026, 9, 1, tzinfo=UTC)
    now = datetime.now(UTC).isoformat()
    with path.open("w", encoding="utf-8") as out, copy_path.open("w", encoding="utf-8") as base:
        out.write("external_id,email,name,occurred_at,sku,qty,price\n")
        for i in range(rows):
            k = rnd.randrange(contacts)
            name = NAMES[i % len(NAMES)]
            when = start + timedelta(seconds=i * 7 + rnd.randrange(7))
            at = when.isoformat()
            sku, qty, price = f"SKU-{rnd.randrange(5000):05d}", rnd.randrange(1, 4), ""
            if name == "cart.updated":
                price = f"{rnd.randrange(100, 20000) / 100:.2f}"
            ext, email = (f"C{k:08d}", "") if i % 10 else ("", f"Person{k}@Example.NET")
            if i % 100 == 42:  # a bad row
                expected.bad += 1
                if (i // 100) % 2:
                    at = "yesterday"
                else:
                    ext, email = f"X{i}", ""
            else:
                expected.new += 1
                properties: dict[str, Any] = {"sku": sku, "qty": qty}
                if price:
                    properties["price"] = float(price)
                values = (
                    k + 1,
                    name,
                    json.dumps(properties),
                    at,
                    now,
                    "bench",
                    f"import:{uuid.UUID(int=rnd.getrandbits(128))}",
                )
                base.write(copy_line(values))
            out.write(f"{ext},{email},{name},{at},{sku},{qty},{price}\n")
    return expected


def verify(url: str, report: dict[str, Any], expected: Expected) -> None:
    check("rows read", report["rows"], expected.rows)
    check("rows rejected", report["rejected"], expected.bad)
    check("events inserted", report["inserted"], expected.new)
    check("events in the store", sql(url, "SELECT count(*) FROM events"), expected.new)
    check(
        "events with their properties",
        sql(url, "SELECT count(*) FROM events WHERE properties ? 'sku' AND contact_id > 0"),
        expected.new,
    )


if __name__ == "__main__":
    run(
        "events",
        rows=10_000_000,
        rate=50_000,
        prepare=write_files,
        seed=seed,
        verify=verify,
        table="events",
        columns=EVENT_COLUMNS,
        seed_baseline=seed,
        contacts=CONTACTS,
    )

"""Segment evaluation at scale: compiled rule vs hand-written SQL, same run, same database.

    .venv/bin/python benchmarks/segments.py [--contacts 1000000] [--url postgresql+psycopg://...]

1. Creates a fresh PostgreSQL database, migrates it, and loads with COPY (psycopg 3
   ``cursor.copy``): N contacts (attributes ``plan``, a ``churn_risk`` score), 10 events
   (last 90 days) and 2 orders (last 2 years) per contact on average, one message per contact
   and clicks on 20% of them.
   FK triggers are off during the load (``session_replication_role = replica``); then ANALYZE.
2. The nested segment below is compiled by ``segments.compile`` (through
   ``segments.membership.count``) and run against a hand-written SQL query for the same set.
   Each is run once to warm the cache, then ``--repeat`` times; medians are compared.
   Both must return the same count and the same sum of ids.
3. ``segments.membership.refresh`` twice at the same ``now``: the first materialises the
   members, the second (unchanged segment) must write nothing (0 entered, 0 exited).

Targets (issue 4): compiled within 1.5x of hand-written, and under 10 s.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crm.db import make_engine, session_scope, upgrade
from segments.membership import count, refresh, segment_statement
from segments.rules import Segment

NOW = datetime(2026, 11, 1, tzinfo=UTC)
SEGMENT = Segment.model_validate(
    {
        "name": "bench_nested",
        "rule": {
            "all": [
                {"attribute": "plan", "eq": "pro"},
                {"event": "product.viewed", "count": {"gte": 3}, "within": "30 days"},
                {"orders": {"total_spend": {"gte": 100}, "last_order": {"within": "90 days"}}},
                {"score": {"churn_risk": {"lt": 0.5}}},
                {"not": {"clicked": {"within": "14 days"}}},
            ]
        },
    }
)
HAND = """
SELECT c.id FROM contacts c
JOIN (SELECT contact_id FROM events
      WHERE name = 'product.viewed' AND occurred_at >= :ev_from AND occurred_at <= :now
      GROUP BY contact_id HAVING count(*) >= 3) e ON e.contact_id = c.id
JOIN (SELECT contact_id FROM orders
      WHERE placed_at <= :now AND status NOT IN ('cancelled', 'canceled', 'refunded', 'failed')
      GROUP BY contact_id
      HAVING sum(total) >= 100 AND max(placed_at) >= :ord_from) o ON o.contact_id = c.id
WHERE c.attributes ->> 'plan' = 'pro' AND c.churn_risk < 0.5
  AND NOT EXISTS (SELECT 1 FROM messages m JOIN message_events me ON me.message_id = m.id
                  WHERE m.contact_id = c.id AND me.type = 'click'
                    AND me.occurred_at >= :click_from AND me.occurred_at <= :now)
"""
EVENT_NAMES = np.array(["product.viewed", "page.viewed", "cart.added", "search", "login"])


def _copy(raw: Any, table: str, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    columns = ", ".join(frame.columns)
    sql = f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)"
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        copy.write(buffer.getvalue())


def _stamps(rng: np.random.Generator, n: int, days: int) -> pd.Series:
    seconds = rng.integers(0, days * 86400, n)
    return pd.Series(pd.Timestamp(NOW) - pd.to_timedelta(seconds, unit="s")).dt.strftime(
        "%Y-%m-%d %H:%M:%S+00"
    )


def load(url: str, contacts: int, seed: int, chunk: int = 1_000_000) -> dict[str, int]:
    """Fill the store with COPY; returns row counts."""
    rng = np.random.default_rng(seed)
    engine = create_engine(url)
    counts = {"contacts": contacts, "events": 0, "orders": 0, "messages": contacts, "clicks": 0}
    now = NOW.strftime("%Y-%m-%d %H:%M:%S+00")
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        raw.execute("SET session_replication_role = replica")
        ids = np.arange(1, contacts + 1)
        plans = rng.choice(np.array(["pro", "free", "team"]), contacts, p=[0.3, 0.5, 0.2])
        _copy(
            raw,
            "contacts",
            pd.DataFrame(
                {
                    "id": ids,
                    "external_id": [f"c{i}" for i in ids],
                    "email": [f"c{i}@example.com" for i in ids],
                    "attributes": [f'{{"plan": "{p}"}}' for p in plans],
                    "created_at": now,
                    "updated_at": now,
                    "churn_risk": rng.random(contacts).round(4),
                }
            ),
        )
        total_events = contacts * 10
        for start in range(0, total_events, chunk):
            n = min(chunk, total_events - start)
            _copy(
                raw,
                "events",
                pd.DataFrame(
                    {
                        "contact_id": rng.integers(1, contacts + 1, n),
                        "name": rng.choice(EVENT_NAMES, n, p=[0.4, 0.3, 0.1, 0.1, 0.1]),
                        "properties": "{}",
                        "occurred_at": _stamps(rng, n, 90),
                        "received_at": now,
                        "source": "bench",
                        "idempotency_key": [f"e{i}" for i in range(start, start + n)],
                    }
                ),
            )
            counts["events"] += n
        total_orders = contacts * 2
        for start in range(0, total_orders, chunk):
            n = min(chunk, total_orders - start)
            _copy(
                raw,
                "orders",
                pd.DataFrame(
                    {
                        "order_id": [f"o{i}" for i in range(start, start + n)],
                        "contact_id": rng.integers(1, contacts + 1, n),
                        "total": rng.gamma(2.0, 40.0, n).round(2),
                        "currency": "USD",
                        "status": rng.choice(
                            np.array(["completed", "cancelled"]), n, p=[0.95, 0.05]
                        ),
                        "placed_at": _stamps(rng, n, 730),
                        "updated_at": now,
                        "attributes": "{}",
                    }
                ),
            )
            counts["orders"] += n
        _copy(
            raw,
            "messages",
            pd.DataFrame(
                {
                    "id": ids,
                    "idempotency_key": [f"m{i}" for i in ids],
                    "contact_id": ids,
                    "channel": "email",
                    "purpose": "marketing",
                    "to_address": [f"c{i}@example.com" for i in ids],
                    "status": "delivered",
                    "attempts": 1,
                    "created_at": _stamps(rng, contacts, 60),
                    "updated_at": now,
                    "meta": "{}",
                }
            ),
        )
        clicked = rng.choice(ids, contacts // 5, replace=False)
        counts["clicks"] = len(clicked)
        _copy(
            raw,
            "message_events",
            pd.DataFrame(
                {
                    "message_id": clicked,
                    "provider": "bench",
                    "provider_event_id": [f"k{i}" for i in clicked],
                    "type": "click",
                    "occurred_at": _stamps(rng, len(clicked), 60),
                    "received_at": now,
                    "machine": False,
                    "payload": "{}",
                }
            ),
        )
        for table in ("contacts", "messages"):
            raw.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {contacts})")
        raw.execute("SET session_replication_role = DEFAULT")
        raw.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return counts


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, list[float]]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        again = fn()
        times.append(time.perf_counter() - started)
        assert again == result
    return result, times


def run(url: str, contacts: int, repeat: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    rows = load(url, contacts, seed)
    load_s = time.perf_counter() - started
    params = {
        "now": NOW,
        "ev_from": NOW - timedelta(days=30),
        "ord_from": NOW - timedelta(days=90),
        "click_from": NOW - timedelta(days=14),
    }

    def compiled() -> tuple[int, int]:
        stmt = segment_statement(SEGMENT, catalog=None, dialect="postgresql", now=NOW).subquery()
        with engine.connect() as conn:
            row = conn.execute(select(func.count(), func.coalesce(func.sum(stmt.c.id), 0))).one()
        return int(row[0]), int(row[1])

    def compiled_count() -> int:
        with session_scope(engine) as session:
            return count(SEGMENT, session=session, now=NOW)

    def hand_count() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM ({HAND}) s"), params).scalar_one())

    def hand_checksum() -> int:
        with engine.connect() as conn:
            sql = f"SELECT coalesce(sum(id), 0) FROM ({HAND}) s"
            return int(conn.execute(text(sql), params).scalar_one())

    members, checksum = compiled()
    assert hand_checksum() == checksum, "compiled and hand-written SQL select different sets"
    n_compiled, t_compiled = timed(compiled_count, repeat)
    n_hand, t_hand = timed(hand_count, repeat)
    assert n_compiled == n_hand == members, (n_compiled, n_hand, members)
    med_c, med_h = statistics.median(t_compiled), statistics.median(t_hand)

    with session_scope(engine) as session:
        t0 = time.perf_counter()
        first = refresh(SEGMENT, session=session, now=NOW)
        t_first = time.perf_counter() - t0
    with session_scope(engine) as session:
        t0 = time.perf_counter()
        second = refresh(SEGMENT, session=session, now=NOW)
        t_second = time.perf_counter() - t0
    assert first == (members, 0), first
    assert second == (0, 0), f"refresh of an unchanged segment wrote {second}"
    engine.dispose()
    return {
        "rows": rows,
        "load_s": round(load_s, 1),
        "members": members,
        "compiled_s": [round(t, 3) for t in t_compiled],
        "hand_s": [round(t, 3) for t in t_hand],
        "compiled_median_s": round(med_c, 3),
        "hand_median_s": round(med_h, 3),
        "ratio": round(med_c / med_h, 3),
        "within_1_5x": med_c <= 1.5 * med_h,
        "under_10s": med_c < 10,
        "refresh_first": {"entered": first[0], "exited": first[1], "s": round(t_first, 3)},
        "refresh_unchanged": {"entered": second[0], "exited": second[1], "s": round(t_second, 3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="server to create the throw-away benchmark database on",
    )
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    server = make_url(args.url)
    name = f"tidings_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        result = {"database": name, **run(url, args.contacts, args.repeat, args.seed)}
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    out = json.dumps(result, indent=2)
    print(out)
    if args.out:
        args.out.write_text(out + "\n")


if __name__ == "__main__":
    main()

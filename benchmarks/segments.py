"""Segment evaluation at scale: compiled rule vs hand-written SQL, same run, same database.

    .venv/bin/python benchmarks/segments.py [--contacts 1000000] [--repeat 5] [--work-mem 64MB]

1. Creates a fresh PostgreSQL database, migrates it, and generates the data inside PostgreSQL
   (one ``INSERT ... SELECT`` from ``generate_series`` per table, ``random()`` after
   ``setseed``): N contacts (attribute ``plan``, a ``churn_risk`` score), 10 events (last 90
   days) and 2 orders (last 2 years) per contact, one message per contact and clicks on 20% of
   them. Indexes are dropped for the load and built afterwards, FK triggers are off
   (``session_replication_role = replica``); then ``VACUUM (ANALYZE)``, as autovacuum would.
2. The nested segment below is compiled by ``segments.compile`` and counted through
   ``segments.membership.count`` (which sets ``segment_work_mem``), against a hand-written
   query for the same set under the same work_mem. One warm-up each, then ``--repeat`` rounds
   that time one of each in turn (a shared machine's load hits both alike); medians compared.
   Both must return the same count and the same sum of ids. The earlier hand-written baseline
   (JOINs on grouped subqueries) runs once more for reference.
3. ``segments.membership.refresh`` twice at the same ``now``: the first materialises the
   members, the second (unchanged segment) must write nothing (0 entered, 0 exited).

Targets (issue 4): compiled within 1.5x of hand-written, and under 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.databases import SERVER, scratch_database
from tidings.config import get_settings
from tidings.crm.db import make_engine, session_scope, upgrade
from tidings.segments.membership import count, refresh, segment_statement, tune_for_segments
from tidings.segments.rules import Segment

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
#: What an expert writes with these indexes: filter contacts first, then look at each
#: survivor's own rows (at most 3 events; spend and last order from one index range).
HAND = """
SELECT c.id FROM contacts c
WHERE c.attributes ->> 'plan' = 'pro' AND c.churn_risk < 0.5
  AND (SELECT count(*) FROM (SELECT 1 FROM events e
                             WHERE e.contact_id = c.id AND e.name = 'product.viewed'
                               AND e.occurred_at >= :ev_from AND e.occurred_at <= :now
                             LIMIT 3) v) = 3
  AND (SELECT sum(o.total) >= 100 AND max(o.placed_at) >= :ord_from FROM orders o
       WHERE o.contact_id = c.id AND o.placed_at <= :now
         AND o.status NOT IN ('cancelled', 'canceled', 'refunded', 'failed'))
  AND NOT EXISTS (SELECT 1 FROM messages m JOIN message_events me ON me.message_id = m.id
                  WHERE m.contact_id = c.id AND me.type = 'click'
                    AND me.occurred_at >= :click_from AND me.occurred_at <= :now)
"""
#: The baseline of the first runs (benchmarks/README.md): every window event and every order
#: grouped by contact, then joined.
HAND_GROUPED = """
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
#: One ``INSERT ... SELECT`` per table, generated inside PostgreSQL (``random()`` after
#: ``setseed``: the same seed gives the same rows). ``OFFSET 0`` keeps the subquery that draws
#: ``r`` from being flattened, so one draw decides a whole CASE.
LOAD_SQL = (
    (
        "contacts",
        """
INSERT INTO contacts (id, external_id, email, attributes, created_at, updated_at, churn_risk)
SELECT i, 'c' || i, 'c' || i || '@example.com',
       jsonb_build_object('plan', CASE WHEN r < 0.3 THEN 'pro' WHEN r < 0.8 THEN 'free'
                                       ELSE 'team' END),
       :now, :now, round(random()::numeric, 4)
FROM (SELECT i, random() AS r FROM generate_series(1, :contacts) AS i OFFSET 0) s
""",
    ),
    (
        "events",
        """
INSERT INTO events (id, contact_id, name, properties, occurred_at, received_at, source,
                    idempotency_key)
SELECT i, 1 + floor(random() * :contacts)::bigint,
       CASE WHEN r < 0.4 THEN 'product.viewed' WHEN r < 0.7 THEN 'page.viewed'
            WHEN r < 0.8 THEN 'cart.added' WHEN r < 0.9 THEN 'search' ELSE 'login' END,
       '{}', :now - floor(random() * 90 * 86400) * interval '1 second', :now, 'bench', 'e' || i
FROM (SELECT i, random() AS r FROM generate_series(1, :events) AS i OFFSET 0) s
""",
    ),
    (
        "orders",
        """
INSERT INTO orders (id, order_id, contact_id, total, currency, status, placed_at, updated_at,
                    attributes)
SELECT i, 'o' || i, 1 + floor(random() * :contacts)::bigint,
       round((-40 * ln((1 - random()) * (1 - random())))::numeric, 2),  -- gamma(2, 40)
       'USD', CASE WHEN random() < 0.95 THEN 'completed' ELSE 'cancelled' END,
       :now - floor(random() * 730 * 86400) * interval '1 second', :now, '{}'
FROM generate_series(1, :orders) AS i
""",
    ),
    (
        "messages",
        """
INSERT INTO messages (id, idempotency_key, contact_id, channel, purpose, to_address, status,
                      attempts, created_at, updated_at, meta)
SELECT i, 'm' || i, i, 'email', 'marketing', 'c' || i || '@example.com', 'delivered', 1,
       :now - floor(random() * 60 * 86400) * interval '1 second', :now, '{}'
FROM generate_series(1, :contacts) AS i
""",
    ),
    (
        "message_events",
        """
INSERT INTO message_events (id, message_id, provider, provider_event_id, type, occurred_at,
                            received_at, machine, payload)
SELECT row_number() OVER (ORDER BY id), id, 'bench', 'k' || id, 'click',
       :now - floor(random() * 60 * 86400) * interval '1 second', :now, false, '{}'
FROM (SELECT id FROM messages ORDER BY random() LIMIT :clicks) s
""",
    ),
)

#: Rows per contact (``--contacts`` scales everything).
SCALE = {"events": 10, "orders": 2, "messages": 1}
CLICK_SHARE = 5  # one message in five was clicked

#: Indexes and unique/primary keys of these tables (except keys a foreign key points at) are
#: dropped before the load and built afterwards: one sort per index instead of 10M random
#: inserts into each (PostgreSQL manual, "Populating a Database").
_INDEXES = """
SELECT t.relname, ic.relname, con.conname,
       pg_get_indexdef(i.indexrelid), pg_get_constraintdef(con.oid)
FROM pg_index i
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u')
WHERE t.relnamespace = current_schema()::regnamespace AND t.relname = ANY(:tables)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f'
                  AND f.conindid = i.indexrelid)
ORDER BY t.relname, ic.relname
"""


def _without_indexes(conn: Connection, tables: list[str]) -> list[str]:
    """Drop the indexes of ``tables``; returns the statements that build them again."""
    rebuild = []
    for table, index, constraint, index_def, constraint_def in conn.execute(
        text(_INDEXES), {"tables": tables}
    ):
        if constraint:
            conn.execute(text(f'ALTER TABLE "{table}" DROP CONSTRAINT "{constraint}"'))
            rebuild.append(f'ALTER TABLE "{table}" ADD CONSTRAINT "{constraint}" {constraint_def}')
        else:
            conn.execute(text(f'DROP INDEX "{index}"'))
            rebuild.append(index_def)
    return rebuild


def load(url: str, contacts: int, seed: int) -> tuple[dict[str, int], dict[str, float]]:
    """Fill the store from inside PostgreSQL; returns row counts and seconds per step."""
    counts = {
        "contacts": contacts,
        **{table: contacts * n for table, n in SCALE.items()},
        "clicks": contacts // CLICK_SHARE,
    }
    params = {"now": NOW, **counts}
    seconds: dict[str, float] = {}
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # no FK triggers
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        conn.execute(text("SET LOCAL work_mem = '64MB'"))
        tables = [table for table, _ in LOAD_SQL]
        rebuild = _without_indexes(conn, tables)
        conn.execute(select(func.setseed(seed % 2**31 / 2**31)))
        for table, sql in LOAD_SQL:
            started = time.perf_counter()
            conn.execute(text(sql), params)
            seconds[table] = time.perf_counter() - started
        started = time.perf_counter()
        for statement in rebuild:
            conn.execute(text(statement))
        seconds["indexes"] = time.perf_counter() - started
        for table in tables:
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )
    # VACUUM as autovacuum would after these inserts: hint bits and the visibility map
    # (index-only scans), then fresh statistics.
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))
    seconds["vacuum_analyze"] = time.perf_counter() - started
    engine.dispose()
    return counts, {step: round(s, 1) for step, s in seconds.items()}


def _seconds(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _median(times: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(times), 3),
        "runs_s": [round(t, 3) for t in times],
    }


def run(url: str, contacts: int, repeat: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    rows, load_steps = load(url, contacts, seed)
    load_s = time.perf_counter() - started
    params = {
        "now": NOW,
        "ev_from": NOW - timedelta(days=30),
        "ord_from": NOW - timedelta(days=90),
        "click_from": NOW - timedelta(days=14),
    }

    def compiled_checksum() -> tuple[int, int]:
        stmt = segment_statement(SEGMENT, catalog=None, dialect="postgresql", now=NOW).subquery()
        with session_scope(engine) as session:
            tune_for_segments(session)
            row = session.execute(select(func.count(), func.coalesce(func.sum(stmt.c.id), 0)))
            n, total = row.one()
        return int(n), int(total)

    def compiled_count() -> int:
        with session_scope(engine) as session:
            return count(SEGMENT, session=session, now=NOW)

    def hand(sql: str, what: str = "count(*)") -> Callable[[], int]:
        def query() -> int:
            with session_scope(engine) as session:
                tune_for_segments(session)  # the same work_mem as the compiled statement
                result = session.execute(text(f"SELECT {what} FROM ({sql}) s"), params)
                return int(result.scalar_one())

        return query

    with engine.connect() as conn:
        server = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("server_version", "shared_buffers", "jit", "work_mem")
        }
    members, checksum = compiled_checksum()
    assert hand(HAND, "coalesce(sum(id), 0)")() == checksum, "hand-written SQL: another set"
    load_before = os.getloadavg()
    assert compiled_count() == hand(HAND)() == members  # warm-up
    t_compiled, t_hand = [], []
    for _ in range(repeat):
        n_compiled, seconds = _seconds(compiled_count)
        t_compiled.append(seconds)
        n_hand, seconds = _seconds(hand(HAND))
        t_hand.append(seconds)
        assert n_compiled == n_hand == members, (n_compiled, n_hand, members)
    n_grouped, t_grouped = _seconds(hand(HAND_GROUPED))
    assert n_grouped == members, (n_grouped, members)
    load_after = os.getloadavg()
    med_c, med_h = statistics.median(t_compiled), statistics.median(t_hand)

    with session_scope(engine) as session:
        first, t_first = _seconds(lambda: refresh(SEGMENT, session=session, now=NOW))
    with session_scope(engine) as session:
        second, t_second = _seconds(lambda: refresh(SEGMENT, session=session, now=NOW))
    assert first == (members, 0), first
    assert second == (0, 0), f"refresh of an unchanged segment wrote {second}"
    engine.dispose()
    return {
        "rows": rows,
        "load_s": round(load_s, 1),
        "load_steps_s": load_steps,
        "server": server,
        "segment_work_mem": get_settings().segment_work_mem or "(server's)",
        "load_average_1_5_15": {
            "before_timing": [round(x, 2) for x in load_before],
            "after_timing": [round(x, 2) for x in load_after],
        },
        "members": members,
        "compiled": _median(t_compiled),
        "hand": _median(t_hand),
        "ratio": round(med_c / med_h, 3),
        "within_1_5x": med_c <= 1.5 * med_h,
        "under_10s": med_c < 10,
        "hand_grouped_once_s": round(t_grouped, 3),
        "refresh_first": {"entered": first[0], "exited": first[1], "s": round(t_first, 3)},
        "refresh_unchanged": {"entered": second[0], "exited": second[1], "s": round(t_second, 3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--work-mem",
        help="segment_work_mem for this run, e.g. 4MB (the server default) or 128MB; "
        "'' keeps the server's; default: the setting",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--url",
        default=SERVER,
        help="server to create the throw-away benchmark database on",
    )
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.work_mem is not None:
        os.environ["TIDINGS_SEGMENT_WORK_MEM"] = args.work_mem
        get_settings.cache_clear()
        get_settings()  # a bad value fails here, before any loading
    with scratch_database(args.url, keep=args.keep) as url:
        result = {
            "database": make_url(url).database,
            **run(url, args.contacts, args.repeat, args.seed),
        }
    out = json.dumps(result, indent=2)
    print(out)
    if args.out:
        args.out.write_text(out + "\n")


if __name__ == "__main__":
    main()

"""The journey report at scale: 1,000,000 recipients, 5,000,000 message events, PostgreSQL.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/report.py [--contacts 1000000]
        [--events 5000000] [--repeat 3] [--out report.json]

1. Creates a fresh PostgreSQL database, migrates it, and generates the data inside PostgreSQL
   (``INSERT ... SELECT`` from ``generate_series``, ``random()`` after ``setseed``; indexes
   dropped for the load and built afterwards, FK triggers off, then ``VACUUM (ANALYZE)``): one
   journey (two versions) with an A/B experiment (45/45, holdout 10%) on its first step; N
   contacts, each enrolled once and assigned; two messages per contact outside the holdout
   (step ``hello`` with the variant, step ``reminder``) in mixed statuses; E message events on
   random messages (delivered, human and machine opens from two providers, human and machine
   clicks, bounces, unsubscribes, complaints); a conversion with revenue for 3% of the
   enrollments, its last touch the ``hello`` message.
2. Asserts the row counts, then times ``tidings.analytics.report.journey_report`` (what
   ``tidings report journey`` computes: steps x variants with every engagement flag per
   message, conversions by last touch, arms, attribution, revenue per day) against the naive
   baseline on the same tables: one ``COUNT(*) ... GROUP BY step, variant, event type`` (events,
   not messages, so duplicates and machine opens are counted: the wrong answer, fast). One
   warm-up each, then ``--repeat`` rounds alternating the two; medians compared.

Target (issue 13): the report under 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.databases import SERVER, scratch_database
from benchmarks.segments import NOW, _without_indexes
from tidings.analytics.report import journey_report
from tidings.crm.db import make_engine, upgrade

DEFINITION = json.dumps(
    {
        "name": "bench",
        "settings": {"goal": {"event": "order.placed", "within": "7 days"}},
        "steps": [
            {
                "id": "hello",
                "type": "email",
                "template": "hello",
                "experiment": {
                    "variants": [{"name": "A", "weight": 50}, {"name": "B", "weight": 50}],
                    "holdout": 10,
                },
            },
            {"id": "wait", "type": "wait", "duration": "2 days"},
            {"id": "reminder", "type": "email", "template": "reminder"},
        ],
    }
)
LOAD_SQL: tuple[tuple[str, str], ...] = (
    (
        "journeys",
        """
INSERT INTO journeys (id, name, version_hash, definition, status, created_at)
VALUES (1, 'bench', 'v1', CAST(:definition AS jsonb), 'active', :now),
       (2, 'bench', 'v2', CAST(:definition AS jsonb), 'active', :now)
""",
    ),
    (
        "experiments",
        """
INSERT INTO experiments (id, name, journey_name, step_id, variants, holdout_percent, status,
                         created_at)
VALUES (1, 'bench.hello', 'bench', 'hello', '{"A": {"weight": 50}, "B": {"weight": 50}}', 10,
        'running', :now)
""",
    ),
    (
        "contacts",
        """
INSERT INTO contacts (id, external_id, email, attributes, created_at, updated_at)
SELECT i, 'c' || i, 'c' || i || '@example.com', '{}', :now, :now
FROM generate_series(1, :contacts) AS i
""",
    ),
    (
        "enrollments",
        """
INSERT INTO enrollments (id, journey_id, contact_id, entry_key, status, entered_at, updated_at,
                         context)
SELECT i, 1 + i % 2, i, 'once', 'finished', :now - interval '10 days', :now, '{}'
FROM generate_series(1, :contacts) AS i
""",
    ),
    (
        "assignments",
        """
INSERT INTO assignments (id, experiment_id, contact_id, variant, assigned_at)
SELECT i, 1, i, CASE WHEN r < 0.10 THEN 'holdout' WHEN r < 0.55 THEN 'A' ELSE 'B' END,
       :now - interval '10 days'
FROM (SELECT i, random() AS r FROM generate_series(1, :contacts) AS i OFFSET 0) s
""",
    ),
    (
        "messages",
        """
INSERT INTO messages (id, idempotency_key, contact_id, journey_id, enrollment_id, step_id,
                      variant, channel, purpose, to_address, status, attempts, created_at,
                      sent_at, updated_at, meta)
SELECT row_number() OVER (ORDER BY a.contact_id, s.step), 'm' || a.contact_id || s.step,
       a.contact_id, 1 + a.contact_id % 2, a.contact_id, s.step,
       CASE WHEN s.step = 'hello' THEN a.variant END, 'email', 'marketing',
       'c' || a.contact_id || '@example.com', st.status, 1,
       :now - interval '10 days' + s.delay, CASE WHEN st.status <> 'held' THEN
       :now - interval '10 days' + s.delay END, :now, '{}'
FROM assignments a
CROSS JOIN (VALUES ('hello', interval '0'), ('reminder', interval '2 days')) AS s(step, delay)
CROSS JOIN LATERAL (SELECT CASE WHEN r < 0.85 THEN 'delivered' WHEN r < 0.93 THEN 'sent'
                                WHEN r < 0.96 THEN 'bounced' ELSE 'held' END AS status
                    FROM (SELECT random() + 0 * a.contact_id AS r) x) st
WHERE a.variant <> 'holdout'
""",
    ),
    (
        "message_events",
        """
INSERT INTO message_events (id, message_id, provider, provider_event_id, type, occurred_at,
                            received_at, machine, payload)
SELECT i, 1 + floor(random() * :messages)::bigint,
       CASE WHEN r < 0.45 THEN 'sendgrid' ELSE 'pixel' END, 'e' || i,
       CASE WHEN r < 0.30 THEN 'delivered' WHEN r < 0.70 THEN 'open' WHEN r < 0.93 THEN 'click'
            WHEN r < 0.96 THEN 'bounce' WHEN r < 0.99 THEN 'unsubscribe' ELSE 'complaint' END,
       :now - floor(random() * 10 * 86400) * interval '1 second', :now,
       (r >= 0.30 AND r < 0.45) OR (r >= 0.70 AND r < 0.72), '{}'
FROM (SELECT i, random() AS r FROM generate_series(1, :events) AS i OFFSET 0) s
""",
    ),
    (
        "conversions",
        """
INSERT INTO conversions (id, idempotency_key, contact_id, kind, goal, value, currency,
                         occurred_at, enrollment_id, journey_id, variant, message_id)
SELECT row_number() OVER (ORDER BY e.id), 'goal:' || e.id, e.contact_id, 'event',
       'bench:order.placed', round((5 + random() * 195)::numeric, 2), 'USD',
       :now - floor(random() * 9 * 86400) * interval '1 second', e.id, e.journey_id, a.variant,
       m.id
FROM enrollments e
JOIN assignments a ON a.contact_id = e.contact_id
LEFT JOIN messages m ON m.contact_id = e.contact_id AND m.step_id = 'hello'
WHERE random() < 0.03
""",
    ),
)
TABLES = [t for t, _ in LOAD_SQL]
BASELINE = """
SELECT m.step_id, m.variant, e.type, count(*)
FROM messages m JOIN message_events e ON e.message_id = m.id
WHERE m.journey_id IN (1, 2)
GROUP BY m.step_id, m.variant, e.type
"""


def load(url: str, contacts: int, events: int, seed: int) -> dict[str, float]:
    seconds: dict[str, float] = {}
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        conn.execute(text("SET LOCAL work_mem = '64MB'"))
        rebuild = _without_indexes(conn, TABLES)
        conn.execute(select(func.setseed(seed % 2**31 / 2**31)))
        params: dict[str, Any] = {
            "now": NOW,
            "contacts": contacts,
            "events": events,
            "definition": DEFINITION,
        }
        for table, sql in LOAD_SQL:
            started = time.perf_counter()
            if table == "message_events":
                params["messages"] = conn.execute(text("SELECT count(*) FROM messages")).scalar()
            conn.execute(text(sql), params)
            seconds[table] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        for statement in rebuild:
            conn.execute(text(statement))
        seconds["indexes"] = round(time.perf_counter() - started, 1)
        for table in TABLES:
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))
    seconds["vacuum_analyze"] = round(time.perf_counter() - started, 1)
    engine.dispose()
    return seconds


def _count(conn: Connection, table: str) -> int:
    return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def run(url: str, contacts: int, events: int, repeat: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    steps = load(url, contacts, events, seed)
    load_s = time.perf_counter() - started
    with engine.connect() as conn:
        rows = {t: _count(conn, t) for t in TABLES}
        server = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("server_version", "shared_buffers", "jit", "work_mem")
        }
        sent_sql = (
            "SELECT count(*) FROM messages WHERE journey_id IN (1, 2) "
            "AND (status IN ('sent', 'delivered', 'bounced') OR sent_at IS NOT NULL)"
        )
        sent = int(conn.execute(text(sent_sql)).scalar_one())
    assert rows["contacts"] == contacts, rows
    assert rows["enrollments"] == contacts, rows
    assert rows["assignments"] == contacts, rows
    assert rows["message_events"] == events, rows
    assert rows["messages"] > 1.7 * contacts, rows

    def report() -> Any:
        with engine.connect() as conn:
            return journey_report(conn, "bench", now=NOW)

    def baseline() -> int:
        with engine.connect() as conn:
            return len(conn.execute(text(BASELINE)).all())

    first = report()  # warm-up, and the numbers checked
    assert first.total.sent == sent, (first.total.sent, sent)
    assert sum(a.enrolled for a in first.arms) == contacts
    assert sum(a.conversions for a in first.arms) == rows["conversions"]
    baseline()
    load_before = os.getloadavg()
    t_report, t_base = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        report()
        t_report.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        baseline()
        t_base.append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    engine.dispose()
    med_r, med_b = statistics.median(t_report), statistics.median(t_base)
    hello = {r.variant: r for r in first.steps if r.step == "hello"}
    return {
        "rows": rows,
        "load_s": round(load_s, 1),
        "load_steps_s": steps,
        "server": server,
        "load_average_1_5_15": {
            "before_timing": [round(x, 2) for x in load_before],
            "after_timing": [round(x, 2) for x in load_after],
        },
        "report": {"median_s": round(med_r, 3), "runs_s": [round(t, 3) for t in t_report]},
        "baseline": {"median_s": round(med_b, 3), "runs_s": [round(t, 3) for t in t_base]},
        "ratio": round(med_r / med_b, 2),
        "under_5s": med_r < 5,
        "sample": {
            v: {"sent": r.sent, "human_opens": r.human_opens, "clicks": r.clicks}
            for v, r in hello.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--url",
        default=SERVER,
        help="server to create the throw-away benchmark database on",
    )
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    with scratch_database(args.url, keep=args.keep) as url:
        result = {
            "database": make_url(url).database,
            **run(url, args.contacts, args.events, args.repeat, args.seed),
        }
    out = json.dumps(result, indent=2)
    print(out)
    if args.out:
        args.out.write_text(out + "\n")


if __name__ == "__main__":
    main()

"""Live segments: time from an event posted through the API to the membership change it causes.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/segments_live.py \
        [--contacts 1000000] [--rate 10000] [--seconds 300] [--baseline-seconds 30] \
        [--clients 4] [--batch 100] [--workers 2] [--segments 20] \
        [--url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

A fresh PostgreSQL database is migrated and filled from inside PostgreSQL (``--contacts``
contacts with a ``plan`` attribute, two older events and one order each). A project with
``--segments`` live segments (``live: true``) is written to a scratch folder: segment k is "has
performed ``bench.e<k>``" and one more condition every contact meets (an attribute, an order
count, a count of other events, an address), so that each posted event moves its contact into
one segment unless it is in already. The web app (``tidings serve``'s app, direct writes, no
Redis) runs under uvicorn with ``--workers`` processes; ``--clients`` threads post batches of
``--batch`` events to ``POST /v1/events``, paced to ``--rate`` events/s in total, each event
carrying the time it was sent as ``occurred_at``.

Two phases in the same run: the *baseline* posts events that no segment reads (the live path
finds nothing to do) for ``--baseline-seconds``; the *live* phase posts the segments' events for
``--seconds``. Then it asserts what happened (every posted event stored; every event whose
contact was not yet in its segment opened exactly one stay, and no stay opened without one),
takes the p50/p95/max time from an event's ``occurred_at`` to the ``entered_at`` of the stay it
opened (when the loop evaluated it) and to the moment the stay was committed, visible to
others (``Visibility``: the goal is measured on this one), runs the tick's full refresh
(``segments.live.sweep``) and asserts it found nothing the live path missed. Prints the rates,
the ratio of the live phase's rate to the baseline's, the latencies, and whether the goals
(rate reached, p95 < 5 s, nothing missed) were met.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.databases import SERVER, scratch_database  # noqa: E402
from benchmarks.segments import _without_indexes  # noqa: E402
from benchmarks.webapp import post, run_clients, start_app, stop_app  # noqa: E402
from tidings.config import Settings  # noqa: E402
from tidings.crm.db import make_engine, upgrade  # noqa: E402
from tidings.journeys.runtime import Runtime  # noqa: E402
from tidings.segments.live import pending, sweep  # noqa: E402
from tidings.web.apikeys import create_key  # noqa: E402

NOW = datetime(2026, 11, 1, tzinfo=UTC)
LOAD_SQL = (
    (
        "contacts",
        """
INSERT INTO contacts (id, external_id, email, attributes, created_at, updated_at)
SELECT i, 'c' || i, 'c' || i || '@example.com',
       jsonb_build_object('plan', CASE WHEN random() < 0.3 THEN 'pro' ELSE 'free' END),
       :now, :now
FROM generate_series(1, :contacts) AS i
""",
    ),
    (
        "events",
        """
INSERT INTO events (id, contact_id, name, properties, occurred_at, received_at, source,
                    idempotency_key)
SELECT i, 1 + (i % :contacts), CASE WHEN i % 2 = 0 THEN 'page.viewed' ELSE 'login' END,
       '{}', :now - (i % 86400) * interval '1 second', :now, 'bench', 'seed' || i
FROM generate_series(1, 2 * :contacts) AS i
""",
    ),
    (
        "orders",
        """
INSERT INTO orders (id, order_id, contact_id, total, currency, status, placed_at, updated_at,
                    attributes)
SELECT i, 'o' || i, i, 10 + i % 90, 'EUR', 'completed', :now - (i % 700) * interval '1 day',
       :now, '{}'
FROM generate_series(1, :contacts) AS i
""",
    ),
)
#: The extra condition of segment k (every loaded contact meets each one).
EXTRA = (
    {"attribute": "plan", "exists": True},
    {"orders": {"count": {"lt": 100}}},
    {"event": "page.viewed", "count": {"lt": 1000}},
    {"attribute": "email", "exists": True},
    {"not": {"attribute": "blocked", "eq": True}},
)


def load(url: str, contacts: int) -> float:
    started = time.perf_counter()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        tables = [table for table, _ in LOAD_SQL]
        rebuild = _without_indexes(conn, tables)
        for _, sql in LOAD_SQL:
            conn.execute(text(sql), {"now": NOW, "contacts": contacts})
        for statement in rebuild:
            conn.execute(text(statement))
        for table in tables:
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))
    engine.dispose()
    return time.perf_counter() - started


def write_project(root: Path, segments: int) -> None:
    (root / "segments").mkdir(parents=True)
    (root / "journeys").mkdir()
    (root / "templates").mkdir()
    for k in range(segments):
        rule = {"all": [{"event": f"bench.e{k}"}, EXTRA[k % len(EXTRA)]]}
        body = {"name": f"live_{k:02d}", "live": True, "rule": rule}
        (root / "segments" / f"live_{k:02d}.yaml").write_text(orjson.dumps(body).decode())


def post_for(
    port: int,
    secret: str,
    *,
    rate: float,
    seconds: float,
    clients: int,
    batch: int,
    names: list[str],
    contacts: int,
    run: str,
) -> tuple[int, float]:
    """Post events paced to ``rate``/s for ``seconds``; returns (events posted, elapsed)."""
    sent = [0] * clients
    interval = batch * clients / rate  # each client's time between batches
    started = time.perf_counter()
    stop = started + seconds
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    def work(n: int, conn: http.client.HTTPConnection) -> None:
        rnd = random.Random(f"{run}-{n}")
        due = started + n * interval / clients
        seq = 0
        while True:
            now = time.perf_counter()
            if now >= stop:
                break
            if now < due:
                time.sleep(due - now)
            due += interval
            at = datetime.now(UTC).isoformat()
            events = []
            for _ in range(batch):
                seq += 1
                events.append(
                    {
                        "contact_id": rnd.randint(1, contacts),
                        "name": rnd.choice(names),
                        "occurred_at": at,
                        "idempotency_key": f"{run}-{n}-{seq}",
                    }
                )
            status = post(conn, "/v1/events", orjson.dumps(events), headers)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            sent[n] += batch

    elapsed = run_clients(port, clients, work)
    return sum(sent), elapsed


class Maintenance:
    """What autovacuum would do, every ``every`` seconds while the benchmark runs (this
    server runs with ``autovacuum = off``): VACUUM the live queue, ANALYZE the tables the live
    path reads and writes, whose statistics are otherwise those of before the run (an empty
    ``segment_memberships``: the planner then scans a segment's stays per probe)."""

    def __init__(self, url: str, every: float) -> None:
        self.url, self.every = url, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        while not self.stop.wait(self.every):
            with engine.connect() as conn:
                conn.execute(text("VACUUM (ANALYZE) segment_changes"))
                conn.execute(text("ANALYZE segment_memberships, events"))
        engine.dispose()


class Visibility:
    """When each stay became visible to other sessions: every ``every`` seconds, the highest
    stay id committed, with the time it was read. The loops take turns (one holds the loop's
    lock from its claim to its commit), so stay ids are handed out in commit order: a stay is
    visible from the first reading at or above its id. ``entered_at`` is the moment its loop
    evaluated it, before the statements ran and the transaction committed; this is the
    moment a journey, a report or a ``wait_for_segment`` step could see it."""

    def __init__(self, url: str, every: float = 0.1) -> None:
        self.url, self.every = url, every
        self.readings: list[tuple[int, datetime]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            while not self.stop.wait(self.every):
                top = conn.execute(text("SELECT max(id) FROM segment_memberships")).scalar()
                self.readings.append((int(top or 0), datetime.now(UTC)))
        engine.dispose()

    def save(self, conn: Any) -> None:
        """The readings as table ``visible`` (max_id, at), for ``VISIBLE_SQL``."""
        conn.execute(text("CREATE TABLE visible (max_id bigint, at timestamptz)"))
        rows = [{"max_id": m, "at": at} for m, at in self.readings]
        conn.execute(text("INSERT INTO visible VALUES (:max_id, :at)"), rows)
        conn.execute(text("CREATE INDEX ON visible (max_id, at)"))
        conn.execute(text("ANALYZE visible"))


def wait_drained(engine: Any, timeout: float) -> float:
    """Seconds until the live loops have evaluated every queued change."""
    started = time.perf_counter()
    while pending(engine):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"{pending(engine)} changes still queued after {timeout:.0f} s")
        time.sleep(0.1)
    return time.perf_counter() - started


CHECK_SQL = """
WITH firsts AS (
    SELECT contact_id, name, min(occurred_at) AS first_at
    FROM events WHERE source LIKE 'api:%' AND name LIKE 'bench.e%'
    GROUP BY contact_id, name
)
SELECT
    (SELECT count(*) FROM firsts) AS pairs,
    (SELECT count(*) FROM segment_memberships) AS stays,
    (SELECT count(*) FROM segment_memberships m JOIN firsts f
       ON f.contact_id = m.contact_id AND 'live_' || lpad(substr(f.name, 8), 2, '0') = m.segment)
       AS matched
"""
LATENCY_SQL = """
SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY s),
       max(s), count(*)
FROM (
    SELECT extract(epoch FROM m.entered_at - f.first_at) AS s
    FROM segment_memberships m
    JOIN (SELECT contact_id, name, min(occurred_at) AS first_at FROM events
          WHERE source LIKE 'api:%' AND name LIKE 'bench.e%' GROUP BY contact_id, name) f
      ON f.contact_id = m.contact_id AND 'live_' || lpad(substr(f.name, 8), 2, '0') = m.segment
) t
"""
#: Seconds from an event to the commit of the stay it opened, and the parts: the request
#: (the event's ``occurred_at``, set by the client as it built the batch, to its
#: ``received_at``), the queue (to the loop's evaluation, ``entered_at``), the loop's step
#: (to the first reading that saw the stay committed, ``Visibility``).
VISIBLE_SQL = """
WITH f AS (
    SELECT contact_id, name, min(occurred_at) AS first_at, min(received_at) AS received
    FROM events WHERE source LIKE 'api:%' AND name LIKE 'bench.e%'
    GROUP BY contact_id, name
), t AS (
    SELECT extract(epoch FROM v.at - f.first_at) AS total,
           extract(epoch FROM f.received - f.first_at) AS request,
           extract(epoch FROM m.entered_at - f.received) AS queue,
           extract(epoch FROM v.at - m.entered_at) AS step
    FROM segment_memberships m
    JOIN f ON f.contact_id = m.contact_id AND 'live_' || lpad(substr(f.name, 8), 2, '0') = m.segment
    CROSS JOIN LATERAL (SELECT at FROM visible WHERE max_id >= m.id ORDER BY max_id, at LIMIT 1) v
)
SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY total), max(total), count(*),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY request),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY queue),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY step)
FROM t
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--baseline-seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--live-batch", type=int, default=5000, help="TIDINGS_LIVE_BATCH")
    parser.add_argument(
        "--loop",
        choices=["thread", "process"],
        default="thread",
        help="the live loop in each web process (thread) or in `tidings live` beside them, "
        "the web app with TIDINGS_LIVE_LOOP=false (process)",
    )
    parser.add_argument(
        "--live-poll", type=float, default=1.0, help="TIDINGS_LIVE_POLL_SECONDS (idle loop)"
    )
    parser.add_argument(
        "--analyze-every", type=float, default=20, help="seconds; 0: no stand-in for autovacuum"
    )
    parser.add_argument("--url", default=SERVER)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()

    database = ExitStack()  # the benchmark's database, dropped in the finally below
    url = database.enter_context(scratch_database(args.url, keep=args.keep))
    proc = None
    looper: subprocess.Popen[bytes] | None = None
    scratch = tempfile.TemporaryDirectory(prefix="tidings-live-")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()}", flush=True)
    try:
        engine = make_engine(url)
        upgrade(engine)
        loaded = load(url, args.contacts)
        print(f"loaded {args.contacts:,} contacts in {loaded:.0f} s", flush=True)
        project = Path(scratch.name) / "project"
        write_project(project, args.segments)
        key = create_key(engine, name="bench")
        env = {
            "TIDINGS_DATABASE_URL": url,
            "TIDINGS_PROJECT_DIR": str(project),
            "TIDINGS_SECRET_KEY": "bench",
            "TIDINGS_LIVE_BATCH": str(args.live_batch),
            "TIDINGS_LIVE_POLL_SECONDS": str(args.live_poll),
        }
        if args.loop == "process":
            env["TIDINGS_LIVE_LOOP"] = "false"
            looper = subprocess.Popen(
                [sys.executable, "-m", "tidings", "live"],
                cwd=project,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
            )
        proc, port = start_app(env=env, cwd=project, workers=args.workers)
        if args.analyze_every:
            maintenance = Maintenance(url, args.analyze_every)
            maintenance.thread.start()
        visibility = Visibility(url)
        visibility.thread.start()
        common: dict[str, Any] = {
            "clients": args.clients,
            "batch": args.batch,
            "contacts": args.contacts,
            "rate": args.rate,
        }
        base_n, base_s = post_for(
            port,
            key.secret,
            seconds=args.baseline_seconds,
            names=["bench.noise"],
            run="base",
            **common,
        )
        base_queued = pending(engine)
        print(f"baseline: {base_n:,} events in {base_s:.1f} s", flush=True)
        names = [f"bench.e{k}" for k in range(args.segments)]
        live_n, live_s = post_for(
            port, key.secret, seconds=args.seconds, names=names, run="live", **common
        )
        print(f"live: {live_n:,} events in {live_s:.1f} s", flush=True)
        lag = wait_drained(engine, timeout=600)
        if looper is not None:
            looper.terminate()
            looper.wait(60)
            looper = None
        time.sleep(2 * visibility.every)  # a reading after the last commit
        visibility.stop.set()
        visibility.thread.join()
        stop_app(proc)
        proc = None
        if args.analyze_every:
            maintenance.stop.set()
            maintenance.thread.join()

        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT count(*) FROM events WHERE source LIKE 'api:%'")
            ).scalar_one()
            pairs, stays, matched = conn.execute(text(CHECK_SQL)).one()
            (p50, p95), worst, measured = conn.execute(text(LATENCY_SQL)).one()
        with engine.begin() as conn:
            visibility.save(conn)
            seen = conn.execute(text(VISIBLE_SQL)).one()
        settings = Settings(database_url=url, project_dir=project, secret_key="bench")
        runtime = Runtime.from_settings(settings, db=engine)
        started = time.perf_counter()
        results = sweep(runtime.engine)
        refresh_s = time.perf_counter() - started
        missed = sum(r.missed for r in results)
        engine.dispose()
    finally:
        stop_app(proc)
        if looper is not None:
            looper.kill()
        scratch.cleanup()
        database.close()
    print(f"events stored:       {stored:,} of {base_n + live_n:,} posted")
    print(
        f"memberships:         {stays:,} stays opened for {pairs:,} first (contact, segment) "
        f"events, {matched:,} matched"
    )
    print(f"baseline queued:     {base_queued} changes (no segment reads its events)")
    print(f"full refresh check:  {missed} missed, {refresh_s:.1f} s for {len(results)} segments")
    assert stored == base_n + live_n, f"stored {stored} of {base_n + live_n} posted events"
    assert base_queued == 0, f"{base_queued} changes queued for events no segment reads"
    assert stays == pairs == matched > 0, (
        f"{pairs} (contact, segment event) pairs, {stays} stays, {matched} matched: "
        "every first event must open exactly one stay"
    )
    assert len(results) == args.segments, f"{len(results)} live segments, not {args.segments}"
    assert missed == 0, "the full refresh found changes the live path missed"
    base_rate, live_rate = base_n / base_s, live_n / live_s
    print(
        f"store:               {args.contacts:,} contacts, {args.segments} live segments, "
        f"{args.workers} uvicorn worker(s), {args.clients} clients, batches of {args.batch}, "
        f"live batch {args.live_batch}, loop: {args.loop}, poll {args.live_poll:g} s"
    )
    print(f"baseline (no segment reads the events): {base_rate:,.0f} events/s")
    print(
        f"live phase:          {live_rate:,.0f} events/s for {live_s:.0f} s "
        f"(target {args.rate:,.0f}/s); ratio to baseline {live_rate / base_rate:.2f}"
    )
    print(f"queue drained:       {lag:.1f} s after the last post")
    print(
        f"event -> evaluation: p50 {p50:.3f} s, p95 {p95:.3f} s, max {worst:.3f} s "
        f"over {measured:,} entries (the stay's entered_at)"
    )
    (v50, v95), vmax, vcount, (r50, r95), (q50, q95), (s50, s95) = seen
    print(
        f"event -> committed:  p50 {v50:.3f} s, p95 {v95:.3f} s, max {vmax:.3f} s "
        f"over {vcount:,} entries (the stay visible to others)"
    )
    print(
        f"  of which request p50/p95 {r50:.2f}/{r95:.2f} s, queue {q50:.2f}/{q95:.2f} s, "
        f"step to commit {s50:.2f}/{s95:.2f} s"
    )
    goals = {
        f"rate {args.rate:,.0f}/s": live_rate >= 0.95 * args.rate,
        "5 minutes": live_s >= 300,
        "1,000,000 contacts": args.contacts >= 1_000_000,
        "p95 < 5 s (committed)": v95 < 5,
        "nothing missed": missed == 0,
    }
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

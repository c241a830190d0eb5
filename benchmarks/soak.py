"""A soak run: journeys, workers, events and webhooks together for minutes; exactly once, flat.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/soak.py --minutes 10
    .venv/bin/python benchmarks/soak.py --minutes 1 --wave 50      # a short run while developing

Everything on loopback, bounded in time (``--minutes`` plus at most ``--drain`` seconds) and in
count (``--wave`` contacts every ``--wave-every`` seconds, ``--sms-rate`` events a second):

- a fresh PostgreSQL database (created and dropped), a Redis database of its own (an empty one
  of 1..14, claimed with a marker key; its ``tidings:rl:*`` keys and the marker are deleted);
- the SendGrid and Twilio simulators in their own process; SendGrid answers after
  ``--provider-latency`` seconds and both count every accepted message by tidings message id;
- ``soak_welcome`` (email, wait ``--wait`` seconds, email again), fed by a wave of newly
  created contacts (email consent granted) enrolled every ``--wave-every`` seconds;
- ``order_status`` (the project's transactional SMS on ``order.shipped``);
- ``--workers`` processes (this script with ``--worker``) calling ``journeys.running.tick_all``
  (reconcile, tick, dispatch) every second, sending through one shared Redis rate limit
  (``TIDINGS_RATE_LIMITS={"sendgrid": --rate}``), each reporting its RSS (VmRSS) every 5 s;
- the web app (``tidings serve``, its own process, direct writes: no Redis buffer) taking
  ``POST /v1/events`` ``order.shipped`` at ``--sms-rate`` a second (one in 20 is retried with the
  same Idempotency-Key) and signed SendGrid event webhooks every 2 s (delivered and open for
  each email sent so far, with duplicates in a batch and whole batches replayed).

The transactional send happens inside the request, so its latency is the HTTP response time
(the response says ``sent: 1``; the Twilio simulator's count is checked at the end). When a
worker's tick claimed the new enrollment first, the worker sends it (``sent: 0``): the latency
then runs until the worker recorded the send. The clock starts after ``--warm-up`` seconds of
the same load, once the second emails flow: minute 1 is the first minute at steady state.

After the run (workers drain what is due) it checks, before printing any speed: no message
accepted twice by a simulator, every message due sent (all emails of every enrolled contact,
one SMS per event), the simulators have exactly the messages the store says were sent, and no
event or webhook event stored twice. Then it prints counts, per-minute p95 of the
transactional path, per-minute RSS of each worker and of the web app, and reconcile counts.
Exits 1 if a check fails, if a worker's RSS in the last minute exceeds ``--rss-bound`` times
its first minute's, or if the last minute's p95 exceeds 2x the first's.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import redis  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from sqlalchemy import text  # noqa: E402

from benchmarks.databases import Database  # noqa: E402
from benchmarks.webapp import free_port, wait_ready  # noqa: E402
from tests.simulators.http import Recorded, Reply  # noqa: E402
from tests.simulators.sendgrid import Processed, SendGridSimulator  # noqa: E402
from tests.simulators.twilio import TwilioSimulator  # noqa: E402
from tidings.channels.ratelimit import window_max  # noqa: E402
from tidings.channels.types import MESSAGE_ID_ARG  # noqa: E402
from tidings.config import Settings  # noqa: E402
from tidings.crm.types import utcnow  # noqa: E402
from tidings.journeys.loader import load_text  # noqa: E402
from tidings.journeys.runtime import Runtime  # noqa: E402
from tidings.web.apikeys import create_key  # noqa: E402

API_KEY = "SG.soak"
TWILIO_SID = "AC" + "0" * 31 + "1"
TWILIO_TOKEN = "test-token"
STATS = "/_soak/stats"
POOL = 300  # contacts with a phone that order.shipped events name
RSS_EVERY = 5.0  # seconds between a worker's RSS reports
JOURNEY = """
name: soak_welcome
trigger: {{type: api}}
steps:
  - {{id: hello, type: email, template: welcome}}
  - {{id: pause, type: wait, duration: {wait} seconds}}
  - {{id: again, type: email, template: welcome}}
"""


# -- simulators (their own process: --simulators) ---------------------------------------------
class CountingSendGrid(SendGridSimulator):
    """SendGrid that remembers only what reconcile asks (id -> x-message-id, to) and counts
    every accepted message by tidings message id; answers after ``latency`` seconds."""

    def __init__(self, *, latency: float) -> None:
        super().__init__(api_key=API_KEY, keep=False)
        self.latency = latency
        self.counts: Counter[str] = Counter()
        self.stamps: list[float] = []
        self.compact: dict[str, tuple[str, str]] = {}

    def processed_by(self, tidings_message_id: str) -> list[Processed]:
        # called under self.lock by the activity lookup: no locking here
        found = self.compact.get(tidings_message_id)
        if found is None:
            return []
        args = {MESSAGE_ID_ARG: tidings_message_id}
        return [Processed(found[0], found[1], "", args, [], {})] * self.counts[tidings_message_id]

    def handle(self, request: Recorded) -> Reply:
        if request.path == STATS:
            with self.lock:
                return Reply(
                    200,
                    {
                        "counts": dict(self.counts),
                        "window_max": window_max(self.stamps, 1.0),
                        "window_max_10": window_max(self.stamps, 10.0),
                        "accepted": len(self.stamps),
                    },
                )
        if request.path == "/v3/mail/send" and self.latency:
            time.sleep(self.latency)
        reply = super().handle(request)
        payload = request.parsed
        if reply.status == 202 and isinstance(payload, dict):
            with self.lock:
                self.stamps.append(time.time())
                for item in payload["personalizations"]:
                    args = {**payload.get("custom_args", {}), **item.get("custom_args", {})}
                    if MESSAGE_ID_ARG in args:
                        ref = str(args[MESSAGE_ID_ARG])
                        self.counts[ref] += 1
                        self.compact[ref] = (reply.headers["X-Message-Id"], item["to"][0]["email"])
        return reply


class CountingTwilio(TwilioSimulator):
    """Twilio counting every created message by the tidings id in its status callback URL."""

    def __init__(self) -> None:
        super().__init__(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
        self.keep = False  # the messages list (for reconcile's lookup) is kept; requests not
        self.counts: Counter[str] = Counter()

    def handle(self, request: Recorded) -> Reply:
        if request.path == STATS:
            with self.lock:
                return Reply(200, {"counts": dict(self.counts), "accepted": len(self.messages)})
        reply = super().handle(request)
        if reply.status == 201 and isinstance(request.parsed, dict):
            callback = urllib.parse.urlsplit(request.parsed.get("StatusCallback", ""))
            ref = urllib.parse.parse_qs(callback.query).get(MESSAGE_ID_ARG, ["?"])[0]
            with self.lock:
                self.counts[ref] += 1
        return reply


def run_simulators(latency: float) -> None:
    sendgrid, twilio = CountingSendGrid(latency=latency).start(), CountingTwilio().start()
    print(sendgrid.port, twilio.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)


def fetch_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{STATS}", timeout=60) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


# -- a worker (its own process: --worker) ----------------------------------------------------
def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_worker() -> None:
    """tick_all every second until SIGTERM; a JSON line every RSS_EVERY seconds and at exit."""
    import tidings.journeys.reconcile as reconcile_module
    from tidings.journeys.running import tick_all

    runtime = Runtime.from_settings(Settings())
    counts: Counter[str] = Counter()
    original = reconcile_module.reconcile

    def counting(*args: Any, **kwargs: Any) -> reconcile_module.ReconcileStats:
        # tick_all imports reconcile at call time: this wrapper sees every call it makes
        stats = original(*args, **kwargs)
        counts.update(
            calls=1,
            checked=stats.checked,
            sent=stats.sent,
            requeued=stats.requeued,
            unknown=stats.unknown,
            failed=stats.failed,
        )
        return stats

    reconcile_module.reconcile = counting
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sent: Counter[str] = Counter()
    started = time.monotonic()
    next_report = started

    def report(final: bool) -> None:
        line = {
            "pid": os.getpid(),
            "t": time.time(),
            "rss_kib": rss_kib(),
            "final": final,
            "reconcile": dict(counts),
            "sent": dict(sent),
        }
        print(json.dumps(line), flush=True)

    while not stop.is_set():
        began = time.monotonic()
        for row in tick_all(runtime):
            sent.update(
                ticks=0,
                sent=row.get("sent", 0),
                failed=row.get("failed", 0),
                retry=row.get("retry", 0),
            )
        sent["ticks"] += 1
        if time.monotonic() >= next_report:
            report(False)
            next_report += RSS_EVERY
        stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))
    report(True)


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Shared:
    """What the load threads record; the main thread reads it after they stop."""

    t0: float
    deadline: float
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    contacts: int = 0  # enrolled in soak_welcome
    waves: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start - t0, seconds)
    orders: set[str] = field(default_factory=set)  # distinct order.shipped events posted
    event_posts: int = 0
    event_retries: int = 0
    by_worker: int = 0  # transactional SMS a worker's tick sent, not the request
    sg_event_ids: set[str] = field(default_factory=set)
    webhook_posts: int = 0
    webhook_events: int = 0  # posted, duplicates and replays included
    webhook_replays: int = 0
    worker_lines: list[dict[str, Any]] = field(default_factory=list)
    web_rss: list[tuple[float, int]] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.errors.append(message)
        self.stop.set()

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline


def guarded(shared: Shared, target: Any, *args: Any) -> threading.Thread:
    def run() -> None:
        try:
            target(shared, *args)
        except Exception as exc:  # reported by the main thread
            shared.fail(f"{target.__name__}: {exc!r}")

    thread = threading.Thread(target=run, name=target.__name__, daemon=True)
    thread.start()
    return thread


def feed(shared: Shared, runtime: Runtime, wave: int, every: float) -> None:
    """A wave of new contacts (email consent granted) enrolled in soak_welcome every ``every``."""
    version = runtime.engine.versions("soak_welcome")[-1]
    while shared.running():
        began = time.monotonic()
        first = shared.contacts
        with runtime.db.begin() as conn:
            ids = list(
                conn.execute(
                    text(
                        "INSERT INTO contacts (external_id, email, first_name, attributes, "
                        "created_at, updated_at) SELECT 'W' || g, 'w' || g || '@example.com', "
                        "'Robin', '{}'::jsonb, now(), now() "
                        "FROM generate_series(CAST(:a AS int), CAST(:b AS int)) g RETURNING id"
                    ),
                    {"a": first, "b": first + wave - 1},
                ).scalars()
            )
            conn.execute(
                text(
                    "INSERT INTO consents (contact_id, channel, purpose, status, source, "
                    "updated_at) SELECT unnest(CAST(:ids AS bigint[])), 'email', 'marketing', "
                    "'granted', 'soak', now()"
                ),
                {"ids": ids},
            )
        runtime.engine.enroll_contacts(version, ids, entry_key=f"wave{shared.waves}", now=utcnow())
        shared.contacts += len(ids)
        shared.waves += 1
        shared.stop.wait(max(0.0, every - (time.monotonic() - began)))


def send(
    conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
) -> tuple[bytes, http.client.HTTPResponse]:
    conn.request("POST", "/v1/events", body=body, headers=headers)
    response = conn.getresponse()
    return response.read(), response


def warm_up(port: int, api_key: str) -> None:
    """One event before the clock starts: the web app builds its runtime on first use."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = orjson.dumps({"external_id": "P0", "name": "order.warm_up", "properties": {}})
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    answer, response = send(conn, body, headers)
    assert response.status == 200, answer
    conn.close()


def post_events(shared: Shared, port: int, api_key: str, rate: float, url: str) -> None:
    """order.shipped at ``rate`` a second, one request per event; one in 20 is retried.

    The SMS is sent inside the request unless a worker's tick took the new enrollment first
    (both may; the one that claims it sends it): then the latency runs until the worker has
    recorded the send (``sent_at``, after the provider accepted it)."""
    from tidings.crm.db import make_engine

    engine = make_engine(url)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    rng = random.Random(7)
    n = 0
    previous: tuple[bytes, str, bytes] | None = None
    next_at = time.monotonic()
    while shared.running():
        shared.stop.wait(max(0.0, next_at - time.monotonic()))
        next_at += 1.0 / rate
        if previous is not None and n % 20 == 19:  # the client lost the answer: same request
            body, key, first = previous
            answer, response = send(conn, body, {**headers, "Idempotency-Key": key})
            if response.status != 200 or response.getheader("Idempotent-Replayed") != "true":
                shared.fail(f"retried event: HTTP {response.status} {answer[:200]!r}")
            elif orjson.loads(answer) != orjson.loads(first):
                shared.fail(f"retried event: a different answer {answer[:200]!r}")
            shared.event_retries += 1
            previous = None
            n += 1
            continue
        order = f"O{n}"
        key = f"soak-{order}"
        body = orjson.dumps(
            {
                "external_id": f"P{rng.randrange(POOL)}",
                "name": "order.shipped",
                "idempotency_key": key,
                "properties": {
                    "order": {"number": order, "tracking_url": f"https://t.example/{n}"}
                },
            }
        )
        began, wall = time.monotonic(), time.time()
        answer, response = send(conn, body, {**headers, "Idempotency-Key": key})
        elapsed = time.monotonic() - began
        if response.status != 200:
            shared.fail(f"order.shipped: HTTP {response.status} {answer[:200]!r}")
            return
        result = orjson.loads(answer)["results"][0]
        if result["status"] != "stored" or result["sent"] not in (0, 1):
            shared.fail(f"order.shipped {order}: {result}")
            return
        if result["sent"] == 0:  # a worker has it
            elapsed = sent_by_worker(engine, key) - wall
            shared.by_worker += 1
        shared.latencies.append((began - shared.t0, elapsed))
        shared.orders.add(order)
        shared.event_posts += 1
        previous = (body, key, answer)
        n += 1
    conn.close()
    engine.dispose()


def sent_by_worker(engine: Any, key: str, limit: float = 60.0) -> float:
    """When the SMS of event ``key`` was recorded as sent (epoch seconds), polled."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        with engine.connect() as db:
            sent_at = db.execute(
                text(
                    "SELECT m.sent_at FROM messages m JOIN enrollments e "
                    "ON e.id = m.enrollment_id WHERE e.journey_id IN "
                    "(SELECT id FROM journeys WHERE name = 'order_status') "
                    "AND e.contact_id = (SELECT contact_id FROM events WHERE idempotency_key = :k) "
                    "AND e.entry_key = 'event:' || :k AND m.sent_at IS NOT NULL"
                ),
                {"k": key},
            ).scalar()
        if sent_at is not None:
            return float(sent_at.timestamp())
        time.sleep(0.01)
    raise TimeoutError(f"the SMS of {key} was not sent within {limit:g} s")


def post_webhooks(shared: Shared, port: int, url: str, key: ec.EllipticCurvePrivateKey) -> None:
    """Every 2 s: delivered for each email sent since the last round, open for every other,
    one in 30 events twice in its batch; every fifth round also replays an earlier batch."""
    from tidings.crm.db import make_engine

    engine = make_engine(url)
    seen: set[int] = set()
    history: list[tuple[bytes, dict[str, str], float]] = []
    rng = random.Random(11)
    rounds = 0

    def post(body: bytes, headers: dict[str, str]) -> None:
        # a connection per request: rounds can be further apart than uvicorn's keep-alive
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/webhooks/sendgrid", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        conn.close()
        if response.status != 200:
            shared.fail(f"webhook: HTTP {response.status} {answer[:200]!r}")
        shared.webhook_posts += 1

    while shared.running():
        shared.stop.wait(2.0)
        rounds += 1
        with engine.connect() as db:
            rows = db.execute(
                text(
                    "SELECT id, to_address FROM messages WHERE channel = 'email' "
                    "AND sent_at >= now() - interval '30 seconds' ORDER BY id"
                )
            ).all()
        events: list[dict[str, Any]] = []
        now = int(time.time())
        for message_id, to in rows:
            if message_id in seen:
                continue
            seen.add(message_id)
            for kind in ("delivered", "open") if message_id % 2 else ("delivered",):
                event = {
                    "email": to,
                    "event": kind,
                    "sg_event_id": f"{kind}-{message_id}",
                    "sg_message_id": f"sg{message_id}.filter",
                    "timestamp": now,
                    MESSAGE_ID_ARG: str(message_id),
                    "category": ["newsletter"],
                }
                events.append(event)
                shared.sg_event_ids.add(str(event["sg_event_id"]))
                if rng.random() < 1 / 30:
                    events.append(event)  # SendGrid delivers at least once
        for first in range(0, len(events), 500):
            batch = events[first : first + 500]
            body = orjson.dumps(batch)
            ts = str(int(time.time()))
            signature = key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
            headers = {
                "Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            }
            post(body, headers)
            shared.webhook_events += len(batch)
            history = [h for h in history if h[2] > time.monotonic() - 120] + [
                (body, headers, time.monotonic())
            ]
        if rounds % 5 == 0 and history:  # the same bytes, the same signature, again
            body, headers, _ = rng.choice(history)
            post(body, headers)
            shared.webhook_events += len(orjson.loads(body))
            shared.webhook_replays += 1
    engine.dispose()


def read_worker(shared: Shared, proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            shared.worker_lines.append({**json.loads(line), "at": time.monotonic() - shared.t0})
        else:
            sys.stderr.write(f"[worker {proc.pid}] {line}")


def sample_web(shared: Shared, pid: int) -> None:
    while shared.running():
        shared.web_rss.append((time.monotonic() - shared.t0, rss_kib(pid)))
        shared.stop.wait(RSS_EVERY)


def claim_redis_db() -> tuple[redis.Redis, str]:
    for db in range(14, 0, -1):  # 15 is the test suite's
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        if client.dbsize() == 0 and client.set("tidings:soak:owner", os.getpid(), nx=True):
            return client, f"redis://127.0.0.1:6379/{db}"
        client.close()
    raise SystemExit("no empty Redis database in 1..15 for the soak run")


def release_redis(client: redis.Redis) -> None:
    for name in client.scan_iter("tidings:rl:*"):
        client.delete(name)
    client.delete("tidings:soak:owner")
    client.close()


def per_minute(samples: list[tuple[float, float]], reduce: Any) -> dict[int, float]:
    by_minute: dict[int, list[float]] = defaultdict(list)
    for at, value in samples:
        by_minute[int(at // 60)].append(value)
    return {minute: reduce(values) for minute, values in sorted(by_minute.items())}


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[94] if len(values) > 1 else values[0]


def check(shared: Shared, url: str, sg: dict[str, Any], tw: dict[str, Any]) -> list[str]:
    """What the run must have done; an empty list when it did."""
    from tidings.crm.db import make_engine

    problems = []
    sg_counts: dict[str, int] = sg["counts"]
    tw_counts: dict[str, int] = tw["counts"]
    for name, counts in (("SendGrid", sg_counts), ("Twilio", tw_counts)):
        twice = {ref: n for ref, n in counts.items() if n > 1}
        if twice:
            problems.append(f"{name} accepted {len(twice)} message(s) more than once: {twice}")
    engine = make_engine(url)
    with engine.connect() as db:
        statuses = db.execute(
            text("SELECT channel, status, count(*) FROM messages GROUP BY 1, 2 ORDER BY 1, 2")
        ).all()
        sent_ids = {
            channel: {str(i) for i in ids}
            for channel, ids in db.execute(
                text(
                    "SELECT channel, array_agg(id) FROM messages WHERE sent_at IS NOT NULL "
                    "AND status IN ('sent', 'delivered') GROUP BY 1"
                )
            ).all()
        }
        active = db.execute(
            text(
                "SELECT count(*) FROM enrollments e JOIN journeys j ON j.id = e.journey_id "
                "WHERE j.name = 'soak_welcome' AND e.status <> 'completed'"
            )
        ).scalar_one()
        events, event_keys = db.execute(
            text(
                "SELECT count(*), count(DISTINCT idempotency_key) FROM events "
                "WHERE name = 'order.shipped'"
            )
        ).one()
        stored, distinct_stored, pairs = db.execute(
            text(
                "SELECT count(*), count(DISTINCT provider_event_id), "
                "count(DISTINCT (message_id, type)) FROM message_events "
                "WHERE provider = 'sendgrid'"
            )
        ).one()
    engine.dispose()
    unsettled = [(ch, st, n) for ch, st, n in statuses if st not in ("sent", "delivered") and n]
    if unsettled:
        problems.append(f"messages not sent: {unsettled}")
    if active:
        problems.append(f"{active} soak_welcome enrollment(s) not completed after the drain")
    emails, texts = sent_ids.get("email", set()), sent_ids.get("sms", set())
    if len(emails) != 2 * shared.contacts:
        problems.append(f"{len(emails)} emails sent for {shared.contacts} contacts (2 each)")
    if emails != set(sg_counts):
        problems.append(
            f"SendGrid has {len(set(sg_counts) - emails)} message(s) the store does not call "
            f"sent, the store {len(emails - set(sg_counts))} SendGrid never accepted"
        )
    if len(texts) != len(shared.orders) or texts != set(tw_counts):
        problems.append(
            f"{len(texts)} SMS sent in the store, {len(tw_counts)} at Twilio, "
            f"{len(shared.orders)} order.shipped events posted"
        )
    if events != len(shared.orders) or event_keys != events:
        problems.append(f"{events} order.shipped events stored for {len(shared.orders)} posted")
    if not stored == distinct_stored == pairs == len(shared.sg_event_ids):
        problems.append(
            f"message_events: {stored} stored, {distinct_stored} distinct ids, {pairs} "
            f"(message, type) pairs, {len(shared.sg_event_ids)} distinct events posted"
        )
    return problems


def soak(args: argparse.Namespace) -> int:
    minutes = args.minutes
    shared = Shared(t0=0.0, deadline=0.0)
    client, redis_url = claim_redis_db()
    sims = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--simulators",
            "--provider-latency",
            str(args.provider_latency),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sims.stdout is not None
    sg_port, tw_port = map(int, sims.stdout.readline().split())
    database = Database(args.url)
    url = database.fresh()
    procs: list[subprocess.Popen[Any]] = []
    web_log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in finally)
        "w+", prefix="tidings-soak-web-", suffix=".log", delete=False
    )
    try:
        env = {
            **os.environ,
            "TIDINGS_DATABASE_URL": url,
            "TIDINGS_SECRET_KEY": "soak",
            "TIDINGS_EMAIL_CHANNEL": "sendgrid",
            "TIDINGS_SENDGRID_HOST": f"http://127.0.0.1:{sg_port}",
            "TIDINGS_SENDGRID_API_KEY": API_KEY,
            "TIDINGS_SMS_CHANNEL": "twilio",
            "TIDINGS_TWILIO_API_BASE": f"http://127.0.0.1:{tw_port}",
            "TIDINGS_TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TIDINGS_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TIDINGS_TWILIO_FROM_NUMBER": "+15005550006",
            "TIDINGS_TWILIO_STATUS_CALLBACK": "http://127.0.0.1:9/webhooks/twilio/status",
            "TIDINGS_QUIET_HOURS": "off",
            "TIDINGS_FREQUENCY_CAP": "off",
            "TIDINGS_RECONCILE_AFTER": args.reconcile_after,
        }
        env.pop("TIDINGS_REDIS_URL", None)
        runtime = Runtime.from_settings(Settings(**settings_from(env)))
        runtime.engine.register(load_text(JOURNEY.format(wait=args.wait), source="soak.yaml"))
        runtime.load(ROOT / "journeys" / "order_status.yaml")
        with runtime.db.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO contacts (external_id, email, phone, first_name, attributes, "
                    "created_at, updated_at) SELECT 'P' || g, 'p' || g || '@example.com', "
                    "'+1415' || lpad(g::text, 7, '0'), 'Robin', '{}'::jsonb, now(), now() "
                    "FROM generate_series(0, CAST(:n AS int)) g"
                ),
                {"n": POOL - 1},
            )
        api_key = create_key(runtime.db, name="soak").secret
        signing = ec.generate_private_key(ec.SECP256R1())
        public = base64.b64encode(
            signing.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()

        web_port = free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", str(web_port)],
            cwd=ROOT,
            env={**env, "TIDINGS_SENDGRID_WEBHOOK_PUBLIC_KEY": public},
            stdout=web_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(web)
        wait_ready(web_port, web)
        warm_up(web_port, api_key)
        worker_env = {
            **env,
            "TIDINGS_REDIS_URL": redis_url,
            "TIDINGS_RATE_LIMITS": json.dumps({"sendgrid": args.rate}),
        }
        workers = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker"],
                cwd=ROOT,
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(args.workers)
        ]
        procs += workers

        shared.t0 = time.monotonic()
        readers = [guarded(shared, read_worker, proc) for proc in workers]
        while len({line["pid"] for line in shared.worker_lines}) < len(workers):
            if time.monotonic() - shared.t0 > 120 or shared.errors:
                raise SystemExit(f"the workers did not start: {shared.errors}")
            time.sleep(0.2)  # each has ticked once: start-up is not part of the first minute
        # the clock starts once the journey is at steady state (second emails flowing); what
        # happens before (the warm-up) runs the same way but is not in the per-minute figures
        shared.t0 = time.monotonic() + args.warm_up
        shared.deadline = shared.t0 + minutes * 60
        load = [
            guarded(shared, feed, runtime, args.wave, args.wave_every),
            guarded(shared, post_events, web_port, api_key, args.sms_rate, url),
            guarded(shared, post_webhooks, web_port, url, signing),
            guarded(shared, sample_web, web.pid),
        ]
        print(
            f"soak: {minutes} min; {args.workers} workers, SendGrid limited to {args.rate}/s "
            f"(Redis {redis_url}), {args.wave} contacts every {args.wave_every:g} s, "
            f"{args.sms_rate:g} order.shipped/s; {args.warm_up:g} s of warm-up first",
            flush=True,
        )
        while shared.running():
            shared.stop.wait(1.0)
            for proc in workers:
                if proc.poll() is not None:
                    shared.fail(f"worker {proc.pid} exited with {proc.returncode}")
        ended = time.monotonic() - shared.t0
        for thread in load:
            thread.join(60)
        if shared.errors:
            raise SystemExit(f"soak failed: {'; '.join(shared.errors)} (web log: {web_log.name})")

        drained = drain(url, args.drain)
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(120)
        for thread in readers:
            thread.join(30)
        web.terminate()
        web.wait(30)
        sg, tw = fetch_stats(sg_port), fetch_stats(tw_port)
        problems = check(shared, url, sg, tw)
        if problems or shared.errors:
            for problem in problems + shared.errors:
                print(f"FAILED: {problem}", flush=True)
            print(f"the web app's log: {web_log.name}")
            return 1
        os.unlink(web_log.name)  # kept only when a check failed
        return report(shared, args, ended, drained, sg, tw, url)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if sims.stdin is not None:
            sims.stdin.close()
        sims.wait(30)
        database.drop(url)
        release_redis(client)
        web_log.close()


def settings_from(env: dict[str, str]) -> dict[str, Any]:
    """The TIDINGS_* variables as Settings arguments (the parent's own runtime)."""
    values: dict[str, Any] = {}
    for name, value in env.items():
        if name.startswith("TIDINGS_") and name[8:].lower() in Settings.model_fields:
            values[name[8:].lower()] = value
    return values


def drain(url: str, limit: float) -> float:
    """Seconds until nothing is due or in flight and every soak_welcome enrollment is done."""
    from tidings.crm.db import make_engine

    engine = make_engine(url)
    began = time.monotonic()
    try:
        while time.monotonic() - began < limit:
            with engine.connect() as db:
                left = db.execute(
                    text(
                        "SELECT (SELECT count(*) FROM messages WHERE status IN "
                        "('queued', 'in_flight')) + (SELECT count(*) FROM enrollments "
                        "WHERE status = 'active')"
                    )
                ).scalar_one()
            if left == 0:
                return time.monotonic() - began
            time.sleep(1.0)
        return time.monotonic() - began
    finally:
        engine.dispose()


def report(
    shared: Shared,
    args: argparse.Namespace,
    ended: float,
    drained: float,
    sg: dict[str, Any],
    tw: dict[str, Any],
    url: str,
) -> int:
    from tidings.crm.db import make_engine

    engine = make_engine(url)
    with engine.connect() as db:
        stored_webhooks = db.execute(text("SELECT count(*) FROM message_events")).scalar_one()
        stored_events = db.execute(
            text("SELECT count(*) FROM events WHERE name = 'order.shipped'")
        ).scalar_one()
    engine.dispose()
    finals = [line for line in shared.worker_lines if line["final"]]
    seconds = args.warm_up + ended + drained  # the whole load, warm-up and drain included
    print(
        f"checked: 0 duplicates at the simulators ({sg['accepted']:,} emails, "
        f"{tw['accepted']:,} SMS, each tidings message id once); every due message sent "
        f"({shared.contacts:,} contacts x 2 emails, {len(shared.orders):,} SMS); no event stored "
        f"twice ({shared.event_retries} retried POSTs, {shared.webhook_replays} replayed "
        f"webhook batches); drained in {drained:.0f} s"
    )
    print(
        f"messages sent: {sg['accepted']:,} emails "
        f"({sg['accepted'] / seconds:.1f}/s over {seconds:.0f} s; "
        f"at SendGrid at most {sg['window_max']} in 1 s and {sg['window_max_10']} in 10 s for "
        f"a limit of {args.rate:g}/s with a bucket of {max(1.0, args.rate):g}), "
        f"{tw['accepted']:,} SMS; by worker: "
        + ", ".join(
            f"{f['sent'].get('sent', 0):,} in {f['sent'].get('ticks', 0)} ticks" for f in finals
        )
    )
    print(
        f"events ingested: {stored_events:,} order.shipped ({shared.event_posts:,} POSTs + "
        f"{shared.event_retries} retries; {shared.by_worker} SMS sent by a worker's tick, not "
        f"in the request), {stored_webhooks:,} webhook events "
        f"({shared.webhook_events:,} posted in {shared.webhook_posts} batches, duplicates and "
        f"{shared.webhook_replays} replays included)"
    )
    reconciled: Counter[str] = Counter()
    for line in finals:
        reconciled.update(line["reconcile"])
    print(
        "reconcile: "
        + ", ".join(
            f"{k}={reconciled.get(k, 0)}"
            for k in ("calls", "checked", "sent", "requeued", "unknown", "failed")
        )
    )

    latency = per_minute(shared.latencies, p95)
    medians = per_minute(shared.latencies, statistics.median)
    counts = per_minute(shared.latencies, len)
    minutes = [m for m in latency if 0 <= m < args.minutes]
    first, last = latency[minutes[0]], latency[minutes[-1]]
    print("transactional order.shipped -> SMS at Twilio (HTTP response), per minute:")
    for m in minutes:
        print(
            f"  minute {m + 1:2d}: p50 {medians[m] * 1000:5.0f} ms  p95 {latency[m] * 1000:5.0f} ms"
            f"  ({counts[m]:.0f} events)"
        )
    ratio = last / first
    print(f"  p95 last / first minute: {ratio:.2f} (bound 2.0)")

    failed = ratio > 2.0
    print(
        f"RSS per minute (MiB, largest sample of the minute; workers' bound {args.rss_bound:g}x):"
    )
    by_pid: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for line in shared.worker_lines:
        if not line["final"]:
            by_pid[line["pid"]].append((line["at"], line["rss_kib"] / 1024))
    rows = {f"worker {pid}": per_minute(samples, max) for pid, samples in by_pid.items()}
    rows["web app"] = per_minute([(at, kib / 1024) for at, kib in shared.web_rss], max)
    for name, values in rows.items():
        shown = [values[m] for m in sorted(values) if 0 <= m < args.minutes]
        growth = shown[-1] / shown[0]
        print(
            f"  {name:>14}: " + " ".join(f"{v:.0f}" for v in shown) + f"   last/first {growth:.2f}"
        )
        if name.startswith("worker") and growth > args.rss_bound:
            failed = True
            print(f"  {name}: RSS grew beyond the bound of {args.rss_bound:.2f}")
    print("PASS" if not failed else "FAIL: p95 or memory beyond its bound")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0, help="SendGrid messages/s, shared")
    parser.add_argument("--wave", type=int, default=200, help="contacts enrolled per wave")
    parser.add_argument("--wave-every", type=float, default=10.0, help="seconds between waves")
    parser.add_argument("--wait", type=int, default=30, help="seconds between the two emails")
    parser.add_argument("--sms-rate", type=float, default=5.0, help="order.shipped per second")
    parser.add_argument("--provider-latency", type=float, default=0.05, help="SendGrid, seconds")
    parser.add_argument("--reconcile-after", default="5 seconds", help="TIDINGS_RECONCILE_AFTER")
    parser.add_argument("--rss-bound", type=float, default=1.15, help="last/first minute RSS")
    parser.add_argument(
        "--warm-up", type=float, default=60.0, help="seconds of load before the clock starts"
    )
    parser.add_argument("--drain", type=float, default=180.0, help="seconds to finish at most")
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--simulators", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulators:
        run_simulators(args.provider_latency)
    elif args.worker:
        run_worker()
    else:
        sys.exit(soak(args))


if __name__ == "__main__":
    main()

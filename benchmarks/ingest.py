"""Webhook ingest: SendGrid events per second through the real web app into PostgreSQL.

    .venv/bin/python benchmarks/ingest.py [--events 200000] [--clients 4] [--workers 1]
                                          [--url postgresql+psycopg://postgres@127.0.0.1/postgres]

A fresh PostgreSQL database is migrated and seeded with 1,000 outbox messages. The web app runs
under uvicorn in its own process (``tidings serve``'s app, direct writes, no Redis) on a loopback
port. The load generator posts signed batches of 100 SendGrid events (a mix of processed,
delivered, open and click, each naming one of the messages in ``custom_args``) over keep-alive
connections from ``--clients`` threads; every batch is signed beforehand, so the timed part is
HTTP + signature check + parse + correlate + insert + status update + commit, per batch.

The baseline, in the same run and on the same database, is the ceiling for the table: the same
rows inserted with one multi-row ``INSERT ... VALUES (...), (...)`` per batch of 100 and a
commit per batch, from one connection, no HTTP, no checks. Prints both rates and the ratio.
Targets: >= 10,000 events/s and >= 0.5 of the ceiling.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import sys
import time
from pathlib import Path

import orjson
import psycopg
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.databases import SERVER, libpq, scratch_database  # noqa: E402
from benchmarks.webapp import post, run_clients, start_app, stop_app  # noqa: E402
from tidings.crm.db import make_engine, upgrade  # noqa: E402
from tidings.crm.models import Contact, Message, MessageEvent  # noqa: E402

BATCH = 100
KINDS = ("processed", "delivered", "open", "click")


def make_batches(n_events: int, message_ids: list[int], run: str) -> list[list[dict[str, object]]]:
    now = int(time.time())
    events = [
        {
            "email": f"p{i % 1000}@example.com",
            "event": KINDS[i % 4],
            "sg_event_id": f"{run}-{i}",
            "sg_message_id": f"sg{i % 1000}.filter",
            "timestamp": now,
            "tidings_message_id": str(message_ids[i % len(message_ids)]),
            "category": ["newsletter"],
            **({"url": "https://shop.example.com/p/1"} if i % 4 == 3 else {}),
            **({"useragent": "Mozilla/5.0", "ip": "203.0.113.9"} if i % 4 >= 2 else {}),
        }
        for i in range(n_events)
    ]
    return [events[i : i + BATCH] for i in range(0, n_events, BATCH)]


def seed(url: str) -> list[int]:
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        cid = conn.execute(
            insert(Contact).values(email="p0@example.com", attributes={}).returning(Contact.id)
        ).scalar_one()
        ids = conn.execute(
            insert(Message).returning(Message.id, sort_by_parameter_order=True),
            [
                {
                    "idempotency_key": f"bench-{i}",
                    "contact_id": cid,
                    "channel": "email",
                    "to_address": f"p{i}@example.com",
                    "status": "sent",
                    "meta": {},
                }
                for i in range(1000)
            ],
        ).scalars()
        result = list(ids)
    engine.dispose()
    return result


def run_load(port: int, bodies: list[tuple[bytes, dict[str, str]]], clients: int) -> float:
    chunks = [bodies[i::clients] for i in range(clients)]

    def work(n: int, conn: http.client.HTTPConnection) -> None:
        for body, headers in chunks[n]:
            status = post(conn, "/webhooks/sendgrid", body, headers)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")

    return run_clients(port, clients, work)


def baseline(url: str, batches: list[list[dict[str, object]]], ids: list[int]) -> float:
    """One multi-row INSERT per batch of 100, commit per batch: the table's ceiling."""
    dsn = libpq(url)
    columns = "message_id, provider, provider_event_id, type, occurred_at, received_at, "
    columns += "machine, url, payload"
    row = "(%s, %s, %s, %s, to_timestamp(%s), now(), %s, %s, %s::jsonb)"

    def sql(n: int) -> str:
        return f"INSERT INTO message_events ({columns}) VALUES " + ", ".join([row] * n)

    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE message_events")
        conn.commit()
        started = time.perf_counter()
        for events in batches:
            params: list[object] = []
            for e in events:
                params += [
                    int(str(e["tidings_message_id"])),
                    "sendgrid",
                    f"b-{e['sg_event_id']}",
                    e["event"],
                    e["timestamp"],
                    False,
                    e.get("url"),
                    orjson.dumps(e).decode(),
                ]
            conn.execute(sql(len(events)), params)
            conn.commit()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--url", default=SERVER)
    args = parser.parse_args()

    with scratch_database(args.url) as url:
        proc = None
        try:
            ids = seed(url)
            key = ec.generate_private_key(ec.SECP256R1())
            public = base64.b64encode(
                key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).decode()
            batches = make_batches(args.events, ids, "run")
            ts = str(int(time.time()))
            bodies = []
            for events in batches:
                body = orjson.dumps(events)
                signature = key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
                bodies.append(
                    (
                        body,
                        {
                            "Content-Type": "application/json",
                            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(
                                signature
                            ).decode(),
                            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
                        },
                    )
                )
            proc, port = start_app(
                env={
                    "TIDINGS_DATABASE_URL": url,
                    "TIDINGS_SENDGRID_WEBHOOK_PUBLIC_KEY": public,
                    "TIDINGS_WEBHOOK_MAX_AGE": "3600",
                    "TIDINGS_SECRET_KEY": "bench",
                },
                cwd=ROOT,
                workers=args.workers,
            )
            warm = bodies[: max(1, len(bodies) // 50)]
            run_load(port, warm, args.clients)  # warm-up: connections, statement cache
            timed = bodies[len(warm) :]
            elapsed = run_load(port, timed, args.clients)
            n_timed = sum(len(orjson.loads(b)) for b, _ in timed)
            engine = make_engine(url)
            with engine.connect() as conn:
                stored = conn.execute(select(func.count()).select_from(MessageEvent)).scalar_one()
            engine.dispose()
            assert stored == args.events, f"stored {stored} of {args.events} events"
            stop_app(proc)
            proc = None
            base = baseline(url, batches[len(warm) :], ids)
        finally:
            stop_app(proc)
    ours, ceiling = n_timed / elapsed, n_timed / base
    print(
        f"events timed:        {n_timed:,} in batches of {BATCH} ({args.clients} clients, "
        f"{args.workers} uvicorn worker(s))"
    )
    print(f"web app -> store:    {ours:,.0f} events/s ({elapsed:.2f} s)")
    print(f"multi-row INSERT:    {ceiling:,.0f} events/s ({base:.2f} s)")
    print(f"ratio:               {ours / ceiling:.2f} (target >= 0.5; >= 10,000 events/s)")


if __name__ == "__main__":
    main()

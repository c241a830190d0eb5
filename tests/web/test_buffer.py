"""The Redis buffer: answered at once, written by the consumer, nothing lost in an outage."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from tests.web.conftest import make_settings, seed
from tests.web.proxy import TcpProxy
from tidings.crm.db import make_engine
from tidings.crm.models import Event, MessageEvent
from tidings.web.apikeys import create_key
from tidings.web.app import create_app
from tidings.web.buffer import Consumer, StreamSink
from tidings.web.items import SendGridBatch


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def batch(start: int, n: int, message_id: int) -> list[dict[str, object]]:
    now = int(time.time())
    return [
        {
            "event": "delivered",
            "sg_event_id": f"e{i}",
            "timestamp": now,
            "email": "ann@example.com",
            "tidings_message_id": str(message_id),
        }
        for i in range(start, start + n)
    ]


def stored(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(MessageEvent)).scalar_one())


@pytest.fixture
def pg_url(postgres_server):
    url = postgres_server.new_database()
    yield url
    postgres_server.drop(url)


def test_postgres_outage_loses_nothing_and_stores_each_event_once(
    pg_url, redis_url, signer, tmp_path
) -> None:
    store = make_engine(pg_url)
    ids = seed(store)
    stream = f"test:{uuid.uuid4().hex[:8]}:ingest"
    settings = make_settings(pg_url, signer, tmp_path, redis_url=redis_url, ingest_stream=stream)
    target = make_url(pg_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    proxy.start()
    proxied = make_engine(
        target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        pool_pre_ping=True,
        connect_args={"connect_timeout": 2},
    )
    consumer = Consumer(settings, db=proxied, retry_delay=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, kwargs={"stop": stop, "block_ms": 50})
    thread.start()
    try:
        with TestClient(create_app(settings, db=store)) as client:

            def post(events):
                body = orjson.dumps(events)
                response = client.post(
                    "/webhooks/sendgrid", content=body, headers=signer.headers(body)
                )
                assert response.status_code == 200

            for k in range(5):
                post(batch(k * 20, 20, ids["ann_email"]))
            assert wait_for(lambda: stored(store) == 100)
            proxy.stop()  # the store is unreachable for the consumer
            for k in range(5, 10):
                post(batch(k * 20, 20, ids["ann_email"]))  # still answered at once
            post(batch(180, 20, ids["ann_email"]))  # SendGrid retried a batch
            assert wait_for(lambda: consumer.stats.retries >= 2)
            assert stored(store) == 100 and consumer.backlog() > 0
            proxy.start()
            assert wait_for(lambda: stored(store) == 200 and consumer.backlog() == 0)
    finally:
        stop.set()
        thread.join(10)
        proxy.stop()
        proxied.dispose()
    with store.connect() as conn:
        keys = conn.execute(select(MessageEvent.provider_event_id)).scalars().all()
    store.dispose()
    assert sorted(keys) == sorted(f"e{i}" for i in range(200))
    assert consumer.stats.duplicates == 20


def test_dead_consumer_entries_are_claimed_and_events_posted(
    store, redis_url, signer, tmp_path
) -> None:
    ids = seed(store)
    stream = f"test:{uuid.uuid4().hex[:8]}:ingest"
    settings = make_settings(
        str(store.url.render_as_string(hide_password=False)),
        signer,
        tmp_path,
        redis_url=redis_url,
        ingest_stream=stream,
        ingest_claim_idle_ms=100,
    )
    key = create_key(store, name="shop")
    with TestClient(create_app(settings, db=store)) as client:
        body = orjson.dumps(batch(0, 10, ids["ann_email"]))
        assert (
            client.post(
                "/webhooks/sendgrid", content=body, headers=signer.headers(body)
            ).status_code
            == 200
        )
        queued = client.post(
            "/v1/events",
            json={"external_id": "C0", "name": "page.viewed"},
            headers={"Authorization": f"Bearer {key.secret}"},
        )
        assert queued.status_code == 202 and queued.json() == {"status": "queued", "count": 1}
    dead = Consumer(settings, db=store, name="dead")
    assert len(dead._read(block_ms=10)) == 2  # read, then "crashed" before writing
    assert stored(store) == 0
    from tidings.journeys.runtime import Runtime
    from tidings.web.events import make_poster

    runtime = Runtime.from_settings(settings, db=store)
    alive = Consumer(settings, db=store, name="alive", post_events=lambda: make_poster(runtime))
    time.sleep(0.15)  # the entries must be idle longer than ingest_claim_idle_ms
    stats = alive.run(until_idle=True, block_ms=10)
    assert stats.entries == 2 and stored(store) == 10 and alive.backlog() == 0
    with store.connect() as conn:
        assert conn.execute(select(Event.name)).scalars().all() == ["page.viewed"]


def test_an_item_the_store_refuses_is_parked_not_retried_forever(
    pg_url, redis_url, signer, tmp_path
) -> None:
    store = make_engine(pg_url)
    ids = seed(store)
    stream = f"test:{uuid.uuid4().hex[:8]}:ingest"
    settings = make_settings(pg_url, signer, tmp_path, redis_url=redis_url, ingest_stream=stream)
    sink = StreamSink(redis_url, stream)
    poison = batch(0, 1, ids["ann_email"])
    poison[0]["sg_event_id"] = "nul\x00byte"  # PostgreSQL text cannot hold NUL
    sink.submit([SendGridBatch(events=batch(1, 5, ids["ann_email"])), SendGridBatch(events=poison)])
    consumer = Consumer(settings, db=store)
    stats = consumer.run(until_idle=True, block_ms=10)
    dead: Any = sink.client.xrange(f"{stream}:dead")
    store.dispose()
    assert (stats.entries, stats.stored, stats.dead, stats.retries) == (2, 5, 1, 0)
    assert len(dead) == 1 and b"nul" in dead[0][1][b"d"]
    assert consumer.backlog() == 0

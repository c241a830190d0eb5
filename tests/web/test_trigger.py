"""POST /v1/journeys/{name}/trigger, and transactional events sent in the call with Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.journeys.test_api_trigger import api_project
from tests.web.conftest import make_settings
from tidings.crm.models import Enrollment, Event
from tidings.journeys.runtime import Runtime
from tidings.web.apikeys import create_key
from tidings.web.app import create_app
from tidings.web.buffer import Consumer
from tidings.web.events import make_poster

ORDER = {"order": {"number": "10042", "carrier": "DHL", "tracking_url": "https://t.example/1"}}


def open_api(settings: Any, store: Any) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime.from_settings(settings, db=store)
    runtime.load_journeys()
    app = create_app(settings, db=store, runtime_factory=lambda: runtime)
    key = create_key(store, name="shop")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key.secret}"
        yield client, runtime


@pytest.fixture
def api(store_url, store, signer, tmp_path) -> Iterator[tuple[TestClient, Runtime]]:
    settings = make_settings(store_url, signer, tmp_path, project_dir=api_project(tmp_path))
    yield from open_api(settings, store)


@pytest.fixture
def buffered_api(
    store_url, store, signer, tmp_path, redis_url
) -> Iterator[tuple[TestClient, Runtime]]:
    settings = make_settings(
        store_url,
        signer,
        tmp_path,
        redis_url=redis_url,
        ingest_stream=f"test:{uuid.uuid4().hex[:8]}:ingest",
    )
    yield from open_api(settings, store)


def outbox(tmp_path: Path, channel: str) -> list[dict[str, Any]]:
    files = sorted((tmp_path / "outbox").glob("*.json"))
    return [m for m in (json.loads(p.read_text()) for p in files) if m.get("channel") == channel]


def test_trigger_sends_at_once_with_data_and_honours_the_idempotency_key(
    api, store, seeded, tmp_path
) -> None:
    client, _ = api
    body = {
        "contacts": [
            {"external_id": "C0", "data": {"code": "A1"}},
            {"email": "BOB@example.com", "data": {"code": "B2"}},
        ],
        "data": {"launch": "spring"},
    }
    first = client.post("/v1/journeys/launch/trigger", json=body, headers={"Idempotency-Key": "l1"})
    assert first.status_code == 200, first.text
    result = first.json()
    assert (result["enrolled"], result["sent"], result["failed"], result["retry"]) == (2, 2, 0, 0)
    assert [c["status"] for c in result["contacts"]] == ["enrolled", "enrolled"]
    bodies = sorted(str(m["body"]).strip() for m in outbox(tmp_path, "sms"))
    assert bodies == ["Code A1 / A1 for the spring launch.", "Code B2 / B2 for the spring launch."]

    again = client.post("/v1/journeys/launch/trigger", json=body, headers={"Idempotency-Key": "l1"})
    assert again.json() == result and again.headers["Idempotent-Replayed"] == "true"
    other = client.post(
        "/v1/journeys/launch/trigger",
        json={**body, "data": {"launch": "autumn"}},
        headers={"Idempotency-Key": "l1"},
    )
    assert other.status_code == 422
    assert len(outbox(tmp_path, "sms")) == 2
    unauthorized = client.post(
        "/v1/journeys/launch/trigger", json=body, headers={"Authorization": "Bearer tid_x_y"}
    )
    assert unauthorized.status_code == 401


def test_trigger_refusals(api, store, seeded, tmp_path) -> None:
    client, runtime = api
    one = {"contacts": [{"external_id": "C0"}]}
    unknown = client.post(
        "/v1/journeys/launch/trigger",
        json={"contacts": [{"external_id": "C0"}, {"email": "nobody@example.com"}]},
    )
    assert unknown.status_code == 422
    assert unknown.json() == {
        "detail": [{"index": 1, "field": "email", "error": "no such contact"}]
    }
    event_journey = client.post("/v1/journeys/order_status/trigger", json=one)
    assert event_journey.status_code == 422
    assert "only `type: api` journeys" in event_journey.json()["detail"]
    assert client.post("/v1/journeys/nope/trigger", json=one).status_code == 404
    runtime.engine.set_status("launch", "paused")
    paused = client.post("/v1/journeys/launch/trigger", json=one)
    assert paused.status_code == 409 and "is paused" in paused.json()["detail"]
    assert client.post("/v1/journeys/launch/trigger", json={"contacts": []}).status_code == 422
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Enrollment)).scalar_one() == 0
    assert outbox(tmp_path, "sms") == []


def test_with_redis_a_transactional_event_is_sent_in_the_call(
    buffered_api, store, seeded, tmp_path, redis_url
) -> None:
    client, runtime = buffered_api
    shipped = {"external_id": "C1", "name": "order.shipped", "properties": ORDER}
    response = client.post(
        "/v1/events", json=[{"external_id": "C0", "name": "page.viewed"}, shipped]
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued", "stored"]
    assert results[1]["sent"] == 1
    [sms] = outbox(tmp_path, "sms")  # no consumer ran: sent in the request
    assert sms["to"] == "+14155550001" and "10042" in str(sms["body"])
    with store.connect() as conn:
        assert conn.execute(select(Event.name)).scalars().all() == ["order.shipped"]
    # what can wait still waits for the consumer
    waiting = client.post("/v1/events", json={"external_id": "C0", "name": "page.viewed"})
    assert waiting.status_code == 202
    consumer = Consumer(
        runtime.settings, db=store, post_events=lambda: make_poster(runtime), name="c"
    )
    consumer.run(until_idle=True, block_ms=10)
    with store.connect() as conn:
        names = sorted(conn.execute(select(Event.name)).scalars().all())
    assert names == ["order.shipped", "page.viewed", "page.viewed"]


def test_an_unknown_contact_gets_the_same_answer_with_or_without_redis(
    api, buffered_api, store, seeded
) -> None:
    body = [
        {"external_id": "C0", "name": "page.viewed"},
        {"external_id": "nobody", "name": "order.shipped", "properties": ORDER},
    ]
    answers = [client.post("/v1/events", json=body) for client, _ in (api, buffered_api)]
    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json() == {
        "detail": [{"index": 1, "field": "external_id", "error": "no such contact"}]
    }
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 0

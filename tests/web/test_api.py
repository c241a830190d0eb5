"""The event API: keys, events (the transactional path), contacts, orders, idempotency, card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tidings.crm.models import Contact, Event, Order
from tidings.journeys.runtime import Runtime
from tidings.web.apikeys import authenticate, create_key, revoke_key
from tidings.web.app import create_app

ORDER = {"order": {"number": "10042", "carrier": "DHL", "tracking_url": "https://t.example/1"}}


@pytest.fixture
def api(settings, store):
    runtime = Runtime.from_settings(settings, db=store)
    runtime.load_journeys()
    app = create_app(settings, db=store, runtime_factory=lambda: runtime)
    key = create_key(store, name="shop")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key.secret}"
        yield client, key


def sms_outbox(tmp_path: Path) -> list[dict[str, object]]:
    files = sorted((tmp_path / "outbox").glob("*.json"))
    return [m for m in (json.loads(p.read_text()) for p in files) if m.get("channel") == "sms"]


def test_keys_are_stored_hashed_and_revocable(store) -> None:
    key = create_key(store, name="shop")
    with store.connect() as conn:
        stored = conn.exec_driver_sql("SELECT key_hash, prefix FROM api_keys").one()
    assert key.secret not in stored and key.secret.startswith(f"tid_{key.prefix}_")
    found = authenticate(store, key.secret)
    assert found is not None and found.name == "shop"
    assert authenticate(store, key.secret + "x") is None
    assert revoke_key(store, prefix=key.prefix) and authenticate(store, key.secret) is None


def test_requests_without_a_valid_key_are_401(api, store) -> None:
    client, key = api
    assert client.post("/v1/events", json={}, headers={"Authorization": ""}).status_code == 401
    bad = {"Authorization": "Bearer tid_nope_nope"}
    assert client.get("/v1/contacts/1", headers=bad).status_code == 401
    revoke_key(store, prefix=key.prefix)
    assert client.get("/v1/contacts/1").status_code == 401


def test_order_shipped_sends_the_sms_at_once_and_idempotency_key_is_honoured(
    api, store, seeded, tmp_path
) -> None:
    client, _ = api
    body = {"external_id": "C1", "name": "order.shipped", "properties": ORDER}
    first = client.post("/v1/events", json=body, headers={"Idempotency-Key": "ship-10042"})
    assert first.status_code == 200, first.text
    [result] = first.json()["results"]
    assert (result["status"], result["sent"]) == ("stored", 1)
    [sms] = sms_outbox(tmp_path)
    assert sms["to"] == "+14155550001" and "10042" in str(sms["body"])
    again = client.post("/v1/events", json=body, headers={"Idempotency-Key": "ship-10042"})
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = client.post(
        "/v1/events",
        json={**body, "name": "order.placed"},
        headers={"Idempotency-Key": "ship-10042"},
    )
    assert other.status_code == 422
    assert len(sms_outbox(tmp_path)) == 1
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 1


def test_event_batch_and_unknown_contact(api, store, seeded) -> None:
    client, _ = api
    batch = [
        {"email": "ANN@example.com", "name": "page.viewed", "properties": {"p": "/"}},
        {"contact_id": seeded["bob"], "name": "page.viewed", "idempotency_key": "pv-1"},
        {"contact_id": seeded["bob"], "name": "page.viewed", "idempotency_key": "pv-1"},
    ]
    response = client.post("/v1/events", json=batch)
    assert [r["status"] for r in response.json()["results"]] == ["stored", "stored", "duplicate"]
    unknown = client.post("/v1/events", json=[batch[0], {"external_id": "nobody", "name": "x"}])
    assert unknown.status_code == 422
    assert unknown.json()["detail"] == [
        {"index": 1, "field": "external_id", "error": "no such contact"}
    ]
    assert client.post("/v1/events", json={"name": "x"}).status_code == 422
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 2


def test_contacts_and_orders_use_the_importer_rules(api, store) -> None:
    client, _ = api
    ok = client.post(
        "/v1/contacts",
        json=[
            {
                "external_id": "S1",
                "email": "Sam@Example.com",
                "phone": "(415) 555-0100",
                "consent_sms": True,
                "attributes": {"tier": "gold"},
            },
            {"external_id": "S2", "email": "sue@example.com"},
        ],
    )
    assert ok.status_code == 200 and ok.json()["inserted"] == 2, ok.text
    bad = client.post(
        "/v1/contacts", json=[{"external_id": "S3"}, {"external_id": "S4", "email": "nope"}]
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["index"] == 1
    assert bad.json()["detail"][0]["field"] == "email"
    order = {
        "order_id": "O1",
        "external_id": "S1",
        "total": "49.90",
        "currency": "eur",
        "status": "paid",
        "placed_at": "2026-11-20T10:00:00Z",
    }
    assert client.post("/v1/orders", json=order).json() == {
        "inserted": 1,
        "updated": 0,
        "unchanged": 0,
    }
    shipped = client.post("/v1/orders", json=[{**order, "status": "shipped"}])
    assert shipped.json()["updated"] == 1
    orphan = client.post("/v1/orders", json=[{**order, "order_id": "O2", "external_id": "S9"}])
    assert orphan.status_code == 422 and orphan.json()["detail"][0]["field"] == "external_id"
    with store.connect() as conn:
        assert conn.execute(select(Contact.phone).where(Contact.external_id == "S1")).scalar() == (
            "+14155550100"
        )
        assert conn.execute(select(func.count()).select_from(Contact)).scalar_one() == 2
        assert conn.execute(select(Order.status, Order.currency)).one() == ("shipped", "EUR")


def test_contact_card_has_the_whole_history_in_time_order(api, store, seeded, signer) -> None:
    client, _ = api
    client.post("/v1/events", json={"external_id": "C0", "name": "signed_up"})
    client.post(
        "/v1/orders",
        json={
            "order_id": "A1",
            "external_id": "C0",
            "total": 10,
            "currency": "USD",
            "status": "paid",
            "placed_at": "2026-01-01T00:00:00Z",
        },
    )
    import orjson

    events = [
        {
            "event": "open",
            "sg_event_id": "x1",
            "timestamp": 1767225600,
            "tidings_message_id": str(seeded["ann_email"]),
            "sg_machine_open": True,
        }
    ]
    body = orjson.dumps(events)
    client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
    card = client.get("/v1/contacts/C0").json()
    assert card["email"] == "ann@example.com"
    kinds = [item["kind"] for item in card["timeline"]]
    assert {"event", "order", "message"} <= set(kinds)
    times = [item["at"] for item in card["timeline"]]
    assert times == sorted(times)
    [email] = [i for i in card["timeline"] if i["kind"] == "message" and i["channel"] == "email"]
    assert email["events"] == [
        {
            "at": "2026-01-01T00:00:00+00:00",
            "type": "open",
            "machine": True,
            "url": None,
            "provider": "sendgrid",
        }
    ]
    assert client.get(f"/v1/contacts/%23{seeded['ann']}").json()["id"] == seeded["ann"]
    assert client.get("/v1/contacts/nobody").status_code == 404


def test_health_readiness_and_body_limit(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok"}
    huge = b"[" + b"{}," * 1_000_000 + b"{}]"
    assert client.post("/webhooks/sendgrid", content=huge).status_code == 413
    assert client.get("/openapi.json").json()["paths"]["/v1/events"]["post"]


def test_contact_attribute_changes_through_the_api_are_kept_in_the_history(api, store) -> None:
    """``has_been`` reads this history (written by database triggers, docs/segments.md)."""
    from tidings.crm.models import AttributeChange

    client, _ = api
    for tier in ("gold", "gold", "platinum"):
        body = {"external_id": "H1", "attributes": {"tier": tier}}
        assert client.post("/v1/contacts", json=body).status_code == 200
    with store.connect() as conn:
        rows = conn.execute(
            select(AttributeChange.key, AttributeChange.value).order_by(AttributeChange.id)
        ).all()
    assert [tuple(r) for r in rows] == [("tier", "gold"), ("tier", "platinum")]


def test_contact_locales_are_normalised_for_template_variants(api, store) -> None:
    """BCP 47 or POSIX, any case: stored as the template variants are named (de_AT, pt_BR)."""
    client, _ = api
    people = [
        {"external_id": "L1", "email": "l1@example.com", "locale": "pt-BR"},
        {"external_id": "L2", "email": "l2@example.com", "locale": "de-at"},
        {"external_id": "L3", "email": "l3@example.com", "locale": "PL"},
    ]
    ok = client.post("/v1/contacts", json=people)
    assert ok.status_code == 200 and ok.json()["inserted"] == 3, ok.text
    with store.connect() as conn:
        stored = dict(conn.execute(select(Contact.external_id, Contact.locale)).all())
    assert stored == {"L1": "pt_BR", "L2": "de_AT", "L3": "pl"}

"""SendGrid Signed Event Webhook: the SDK's own vector, a key made here, replays, duplicates."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from tests.web.conftest import Signer, make_settings
from tidings.crm.models import Consent, ConsentChange, Message, MessageEvent, Suppression
from tidings.web.app import create_app

# The sendgrid-python SDK's unit test vector (test/unit/test_eventwebhook.py).
SDK_PUBLIC_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62"
    "gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
SDK_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+"
    "uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
)
SDK_TIMESTAMP = "1600112502"
SDK_PAYLOAD = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": (
                    "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
                ),
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
)
SDK_HEADERS = {
    "X-Twilio-Email-Event-Webhook-Signature": SDK_SIGNATURE,
    "X-Twilio-Email-Event-Webhook-Timestamp": SDK_TIMESTAMP,
    "Content-Type": "application/json",
}


def count(db: Engine, model: type) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def sdk_client(store_url: str, store: Engine, tmp_path: Path, signer: Signer, max_age: int):
    settings = make_settings(
        store_url,
        signer,
        tmp_path,
        sendgrid_webhook_public_key=SDK_PUBLIC_KEY,
        webhook_max_age=max_age,
    )
    return TestClient(create_app(settings, db=store))


def test_sdk_test_vector_is_accepted_and_stored(store_url, store, tmp_path, signer) -> None:
    years = int(time.time()) - int(SDK_TIMESTAMP) + 3600
    with sdk_client(store_url, store, tmp_path, signer, max_age=years) as client:
        response = client.post("/webhooks/sendgrid", content=SDK_PAYLOAD, headers=SDK_HEADERS)
        assert response.status_code == 200, response.text
        tampered = SDK_PAYLOAD.replace("dropped", "droppee")
        refused = client.post("/webhooks/sendgrid", content=tampered, headers=SDK_HEADERS)
        assert refused.status_code == 403
    with store.connect() as conn:
        [event] = conn.execute(select(MessageEvent)).all()
        [suppression] = conn.execute(select(Suppression)).all()
    assert (event.type, event.provider, event.message_id) == ("dropped", "sendgrid", None)
    assert (suppression.address, suppression.reason) == ("hello@world.com", "dropped")


def test_sdk_vector_is_a_replay_under_the_default_window(store_url, store, tmp_path, signer):
    with sdk_client(store_url, store, tmp_path, signer, max_age=600) as client:
        response = client.post("/webhooks/sendgrid", content=SDK_PAYLOAD, headers=SDK_HEADERS)
    assert response.status_code == 403 and "window" in response.json()["detail"]
    assert count(store, MessageEvent) == 0 and count(store, Suppression) == 0


def events_for(ids: dict[str, int], n: int = 3) -> list[dict[str, object]]:
    mid = str(ids["ann_email"])
    now = int(time.time())
    kinds = ["delivered", "open", "click"]
    return [
        {
            "email": "ann@example.com",
            "event": kinds[i % 3],
            "sg_event_id": f"evt-{i}",
            "sg_message_id": "abc.1",
            "timestamp": now,
            "tidings_message_id": mid,
            **({"url": "https://shop.example.com/p/1"} if kinds[i % 3] == "click" else {}),
        }
        for i in range(n)
    ]


def test_signed_batch_posted_twice_is_stored_once(client, store, seeded, signer) -> None:
    body = orjson.dumps(events_for(seeded, 30))
    for _ in range(2):
        response = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
        assert response.status_code == 200, response.text
    assert count(store, MessageEvent) == 30
    with store.connect() as conn:
        status = conn.execute(
            select(Message.status).where(Message.id == seeded["ann_email"])
        ).scalar_one()
        linked = conn.execute(
            select(func.count()).where(MessageEvent.message_id == seeded["ann_email"])
        ).scalar_one()
        url = conn.execute(
            select(MessageEvent.url).where(MessageEvent.type == "click").limit(1)
        ).scalar_one()
    assert (status, linked, url) == ("delivered", 30, "https://shop.example.com/p/1")


def test_forged_tampered_and_stale_requests_write_nothing(client, store, seeded, signer):
    body = orjson.dumps(events_for(seeded))
    other = Signer()
    cases = {
        "forged": other.headers(body),
        "stale": signer.headers(body, timestamp=int(time.time()) - 3600),
        "future": signer.headers(body, timestamp=int(time.time()) + 3600),
        "unsigned": {"Content-Type": "application/json"},
        "garbage signature": {
            **signer.headers(body),
            "X-Twilio-Email-Event-Webhook-Signature": "!!",
        },
    }
    for name, headers in cases.items():
        response = client.post("/webhooks/sendgrid", content=body, headers=headers)
        assert response.status_code == 403, name
    good = signer.headers(body)
    tampered = body.replace(b"delivered", b"bounce")
    assert client.post("/webhooks/sendgrid", content=tampered, headers=good).status_code == 403
    assert count(store, MessageEvent) == 0


def test_machine_open_bounce_and_spam_report(client, store, seeded, signer) -> None:
    now = int(time.time())
    mid = str(seeded["ann_email"])
    events = [
        {
            "event": "open",
            "sg_event_id": "o1",
            "sg_machine_open": True,
            "email": "ann@example.com",
            "timestamp": now,
            "tidings_message_id": mid,
        },
        {
            "event": "bounce",
            "type": "bounce",
            "sg_event_id": "b1",
            "email": "Ann@Example.com",
            "reason": "550 no such user",
            "timestamp": now,
            "tidings_message_id": mid,
        },
        {
            "event": "spamreport",
            "sg_event_id": "s1",
            "email": "bob@example.com",
            "timestamp": now,
            "custom_args": {"tidings_message_id": str(seeded["bob_email"])},
        },
        {"event": "brand_new_kind", "sg_event_id": "u1", "timestamp": now},
        {"event": "open", "timestamp": now},  # no sg_event_id: skipped
    ]
    body = orjson.dumps(events)
    assert (
        client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body)).status_code
        == 200
    )
    with store.connect() as conn:
        types = dict(conn.execute(select(MessageEvent.provider_event_id, MessageEvent.type)).all())
        machine = conn.execute(
            select(MessageEvent.machine).where(MessageEvent.provider_event_id == "o1")
        ).scalar_one()
        statuses = dict(conn.execute(select(Message.id, Message.status)).all())
        suppressed = set(conn.execute(select(Suppression.address, Suppression.reason)).all())
        consents = set(
            conn.execute(
                select(Consent.contact_id, Consent.status).where(
                    Consent.channel == "email", Consent.purpose == "marketing"
                )
            ).all()
        )
        audit = set(conn.execute(select(ConsentChange.contact_id, ConsentChange.source)).all())
    assert types == {"o1": "open", "b1": "bounce", "s1": "complaint", "u1": "unknown"}
    assert machine is True
    assert statuses[seeded["ann_email"]] == "bounced"
    assert suppressed == {("ann@example.com", "bounce"), ("bob@example.com", "complaint")}
    assert consents == {(seeded["ann"], "revoked"), (seeded["bob"], "revoked")}
    assert audit == {(seeded["ann"], "sendgrid:bounce"), (seeded["bob"], "sendgrid:spamreport")}


def test_not_json_and_not_a_list_are_400(client, signer) -> None:
    for body in (b"{not json", b'{"event": "open"}'):
        response = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
        assert response.status_code == 400


def stored_types(db: Engine) -> list[tuple[str, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(MessageEvent.provider_event_id, MessageEvent.type).order_by(MessageEvent.id)
        )
        return [(e if t != "dead_letter" else "dead", t) for e, t in rows]


def dead_letters(db: Engine) -> list[dict[str, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(MessageEvent.payload, MessageEvent.message_id).where(
                MessageEvent.type == "dead_letter"
            )
        ).all()
    assert all(r.message_id is None for r in rows)
    return [r.payload for r in rows]


def test_an_event_the_store_refuses_does_not_sink_its_batch(client, store, seeded, signer):
    events = events_for(seeded, 3)
    events[1]["sg_event_id"] = "nul\x00byte"  # PostgreSQL text cannot hold NUL
    body = orjson.dumps(events)
    response = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
    assert response.status_code == 200 and response.json()["dead_lettered"] == 1
    assert stored_types(store) == [
        ("evt-0", "delivered"),
        ("evt-2", "click"),
        ("dead", "dead_letter"),
    ]
    [dead] = dead_letters(store)
    assert "NUL" in dead["error"] and orjson.loads(dead["raw"])["sg_event_id"] == "nul\x00byte"


@pytest.mark.parametrize("depth", [255, 600, 1024])
def test_an_event_too_deep_to_write_back_is_dead_lettered_alone(
    client, store, seeded, signer, depth
) -> None:
    """orjson reads 1,024 levels but writes 254: such an event once refused its whole batch
    with a 500 (SendGrid retries forever, the good events are never stored)."""
    events = events_for(seeded, 3)
    good = [orjson.dumps(e) for e in events]
    nested = b"[" * (depth - 2) + b"]" * (depth - 2)  # inside the batch array and the event
    bad = good[1][:-1] + b',"deep":' + nested + b"}"
    body = b"[" + b",".join([good[0], bad, good[2]]) + b"]"
    assert len(orjson.loads(body)) == 3  # orjson reads it
    for _ in range(2):  # SendGrid retries: still stored once
        response = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
        assert response.status_code == 200, response.text
        assert response.json() == {"received": 3, "dead_lettered": 1}
    assert stored_types(store) == [
        ("evt-0", "delivered"),
        ("evt-2", "click"),
        ("dead", "dead_letter"),
    ]
    [dead] = dead_letters(store)
    assert "Recursion" in dead["error"]
    assert dead["raw"].replace(" ", "").encode() == bad

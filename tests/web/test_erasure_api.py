"""Export and erasure through the API (GET /v1/contacts/{ref}/export, DELETE /v1/contacts/{ref}),
suppressed writes, consent again, and webhooks arriving for an erased contact's messages."""

from __future__ import annotations

import time

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tidings.crm.models import Contact, Erasure, Message, MessageEvent, Suppression
from tidings.journeys.runtime import Runtime
from tidings.web.apikeys import create_key
from tidings.web.app import create_app


@pytest.fixture
def api(settings, store):
    runtime = Runtime.from_settings(settings, db=store)
    runtime.load_journeys()
    app = create_app(settings, db=store, runtime_factory=lambda: runtime)
    key = create_key(store, name="crm-team")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key.secret}"
        yield client, key


def test_export_and_erase_need_a_key(api) -> None:
    client, _ = api
    none = {"Authorization": ""}
    assert client.get("/v1/contacts/C0/export", headers=none).status_code == 401
    assert client.delete("/v1/contacts/C0", headers=none).status_code == 401


def test_export_then_erase_by_email_then_writes_are_suppressed(api, store, seeded) -> None:
    client, key = api
    exported = client.get("/v1/contacts/ann@example.com/export")
    assert exported.status_code == 200, exported.text
    document = exported.json()
    assert document["contact"]["external_id"] == "C0"
    assert len(document["tables"]["consents"]) == 4
    assert {m["to_address"] for m in document["tables"]["messages"]} == {
        "ann@example.com",
        "+14155550000",
    }
    assert "attachment" in exported.headers["content-disposition"]
    assert client.get("/v1/contacts/nobody@example.com/export").status_code == 404

    erased = client.delete("/v1/contacts/ann@example.com")
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["status"] == "erased" and body["contact_id"] == seeded["ann"]
    assert body["counts"]["consents"] == {"deleted": 4}
    with store.connect() as conn:
        log = conn.execute(select(Erasure.actor, Erasure.counts)).one()
    assert log.actor == f"api:crm-team ({key.prefix})" and log.counts == body["counts"]

    # the same request again, by email or external id: already erased, nothing logged again
    for ref in ("ann@example.com", "C0", "+14155550000"):
        again = client.delete(f"/v1/contacts/{ref}")
        assert again.status_code == 200, (ref, again.text)
        assert again.json()["status"] == "already erased"
        assert again.json()["erasure_id"] == body["erasure_id"]
    assert client.delete(f"/v1/contacts/%23{seeded['ann']}").json()["status"] == "already erased"
    assert client.delete("/v1/contacts/nobody@example.com").status_code == 404
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Erasure)).scalar_one() == 1

    # a contact write naming them: 409, nothing stored, the reason says why
    refused = client.post("/v1/contacts", json={"email": "Ann@Example.com", "first_name": "Ann"})
    assert refused.status_code == 409, refused.text
    (item,) = refused.json()["suppressed"]
    assert item["index"] == 0 and item["field"] == "email" and "erased" in item["error"]
    # in an array the others are stored, the erased one is listed
    mixed = client.post("/v1/contacts", json=[{"email": "new@example.com"}, {"external_id": "C0"}])
    assert mixed.status_code == 200 and mixed.json()["inserted"] == 1
    assert [s["index"] for s in mixed.json()["suppressed"]] == [1]
    # an event naming them is refused with the reason
    event = client.post("/v1/events", json={"email": "ann@example.com", "name": "x.y"})
    assert event.status_code == 422
    assert "erased" in event.json()["detail"][0]["error"]
    # and by the anonymous row's id: no such contact (an erased contact takes no events)
    event = client.post("/v1/events", json={"contact_id": seeded["ann"], "name": "x.y"})
    assert event.status_code == 422
    with store.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(Contact).where(Contact.email == "ann@example.com")
            ).scalar_one()
            == 0
        )

    # reconsent needs a granted consent; with one, the person comes back as a new contact
    bad = client.post("/v1/contacts", json={"email": "ann@example.com", "reconsent": True})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "reconsent"
    back = client.post(
        "/v1/contacts",
        json={"email": "ann@example.com", "consent_email": "yes", "reconsent": True},
    )
    assert back.status_code == 200, back.text
    assert back.json() == {"inserted": 1, "updated": 0, "unchanged": 0}
    with store.connect() as conn:
        new = conn.execute(
            select(Contact.id).where(Contact.email == "ann@example.com")
        ).scalar_one()
    assert new != seeded["ann"]


def test_webhooks_after_the_erasure_bring_nothing_back(api, store, seeded, signer, client) -> None:
    """A message was with the provider when the contact was erased: its delivery, bounce and
    click still count, but the payload, link and the address in clear are not stored."""
    api_client, _ = api
    assert api_client.delete("/v1/contacts/C0").status_code == 200
    mid = seeded["ann_email"]
    now = int(time.time())
    events = [
        {
            "email": "ann@example.com",
            "event": kind,
            "sg_event_id": f"late-{kind}",
            "sg_message_id": "abc.1",
            "timestamp": now,
            "tidings_message_id": mid,
            **({"url": "https://shop.example.com/p?who=ann"} if kind == "click" else {}),
            **(
                {"type": "bounce", "reason": "550 ann@example.com unknown"}
                if kind == "bounce"
                else {}
            ),
        }
        for kind in ("delivered", "click", "bounce")
    ]
    body = orjson.dumps(events)
    response = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
    assert response.status_code == 200, response.text
    with store.connect() as conn:
        stored = conn.execute(
            select(MessageEvent.type, MessageEvent.payload, MessageEvent.url).where(
                MessageEvent.message_id == mid
            )
        ).all()
        suppressed = conn.execute(select(Suppression.address)).scalars().all()
        status, address, error = conn.execute(
            select(Message.status, Message.to_address, Message.error).where(Message.id == mid)
        ).one()
    assert sorted(t for t, _, _ in stored) == ["bounce", "click", "delivered"]
    assert all(p == {} and u is None for _, p, u in stored)
    assert "ann@example.com" not in suppressed
    assert status == "bounced" and address == "" and error is None

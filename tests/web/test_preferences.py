"""The preference page's rules without a browser: RFC 8058 one-click on a message of a topic
leaves that topic only, a save writes only what differs, the card lists topic choices."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from tests.conftest import FIXTURE_PROJECT
from tests.web.conftest import make_settings, seed
from tidings.crm.models import Consent, ConsentChange, Message, TopicSubscription
from tidings.templates.tracking import sign_token
from tidings.web.apikeys import create_key
from tidings.web.app import create_app


@pytest.fixture
def client(store_url: str, store: Engine, signer, tmp_path) -> Iterator[TestClient]:
    settings = make_settings(store_url, signer, tmp_path, project_dir=FIXTURE_PROJECT)
    with TestClient(create_app(settings, db=store), follow_redirects=False) as test_client:
        yield test_client


def _state(store: Engine, cid: int) -> tuple[dict[str, str], dict[str, str]]:
    with store.connect() as conn:
        consents = {
            f"{r.channel}:{r.purpose}": r.status
            for r in conn.execute(
                select(Consent.channel, Consent.purpose, Consent.status).where(
                    Consent.contact_id == cid
                )
            )
        }
        topics = {
            f"{r.channel}:{r.topic}": r.status
            for r in conn.execute(
                select(
                    TopicSubscription.channel, TopicSubscription.topic, TopicSubscription.status
                ).where(TopicSubscription.contact_id == cid)
            )
        }
    return consents, topics


def test_one_click_on_a_topic_message_leaves_that_topic_only(client, store) -> None:
    ids = seed(store)
    with store.begin() as conn:
        conn.execute(
            update(Message)
            .where(Message.id == ids["ann_email"])
            .values(meta={"topic": "newsletter"})
        )
    token = sign_token("u", str(ids["ann_email"]), secret="test-secret")
    page = client.get(f"/u/{token}")
    assert page.status_code == 200
    assert 'name="topic" value="email:newsletter" checked' in page.text
    assert 'name="topic" value="sms:offers">' in page.text  # opt-in, not chosen
    assert "Unsubscribe from “Monthly newsletter” (Email)" in page.text
    response = client.post(
        f"/u/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and not response.cookies
    consents, topics = _state(store, ids["ann"])
    assert consents["email:marketing"] == "granted"  # the rest of email marketing stays
    assert topics == {"email:newsletter": "revoked"}
    with store.connect() as conn:
        audit = conn.execute(
            select(
                ConsentChange.topic,
                ConsentChange.status,
                ConsentChange.previous_status,
                ConsentChange.source,
                ConsentChange.detail,
            )
        ).one()
    assert tuple(audit) == (
        "newsletter",
        "revoked",
        "granted",
        "unsubscribe:one-click",
        {"message_id": ids["ann_email"], "default": "opt-out"},
    )
    # a replayed one-click changes nothing more
    client.post(
        f"/u/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with store.connect() as conn:
        assert len(conn.execute(select(ConsentChange.id)).all()) == 1
    # a message without a topic: one-click revokes the channel's marketing, as before
    other = sign_token("u", str(ids["bob_email"]), secret="test-secret")
    client.post(
        f"/u/{other}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert _state(store, ids["bob"]) == (
        {
            "email:marketing": "revoked",
            "email:transactional": "granted",
            "sms:marketing": "granted",
            "sms:transactional": "granted",
        },
        {},
    )


def test_a_save_writes_only_what_differs_and_the_card_shows_it(client, store) -> None:
    ids = seed(store)
    token = sign_token("u", str(ids["ann_email"]), secret="test-secret")
    keep = ["email:marketing", "email:transactional", "sms:marketing", "sms:transactional"]
    response = client.post(
        f"/u/{token}",
        data={
            "action": "save",
            "pref": keep,
            "topic": ["email:newsletter", "email:offers"],  # product_updates left; sms:offers off
        },
    )
    assert response.status_code == 200 and "Your choices are saved." in response.text
    consents, topics = _state(store, ids["ann"])
    assert set(consents.values()) == {"granted"}
    assert topics == {"email:product_updates": "revoked", "email:offers": "granted"}
    with store.connect() as conn:
        assert len(conn.execute(select(ConsentChange.id)).all()) == 2
    key = create_key(store, name="card")
    card = client.get("/v1/contacts/C0", headers={"X-API-Key": key.secret}).json()
    assert sorted((t["topic"], t["status"]) for t in card["topics"]) == [
        ("offers", "granted"),
        ("product_updates", "revoked"),
    ]
    assert {c.get("topic") for c in card["timeline"] if c["kind"] == "consent"} == {
        "offers",
        "product_updates",
    }


def test_every_language_of_the_pages_has_every_text() -> None:
    from tidings.web.texts import TEXTS, language_for

    for language, words in TEXTS.items():
        assert set(words) == set(TEXTS["en"]), language
    assert [language_for(x) for x in ("de_AT", "de-DE", "DE", "pt_BR", "", None)] == [
        "de",
        "de",
        "de",
        "en",
        "en",
        "en",
    ]

"""The preference page in a real browser (headless Chromium through Playwright), in English
and in German: the project's topics are shown with their defaults, a change is saved and
audited, "unsubscribe from everything" leaves everything. Chromium is found as in
test_reports_browser.py (Debian's binary; missing: skipped outside CI, failed in CI).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from tests.conftest import FIXTURE_PROJECT
from tests.web.conftest import make_settings
from tidings.cli.demo import serving
from tidings.config import Settings
from tidings.crm.models import Consent, ConsentChange, Contact, Message, TopicSubscription
from tidings.templates.tracking import sign_token
from tidings.web.app import create_app


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, root)
    return root


@pytest.fixture
def live(project: Path, store_url: str, store: Engine, signer, tmp_path: Path) -> Iterator[str]:
    settings: Settings = make_settings(store_url, signer, tmp_path, project_dir=project)
    with serving(create_app(settings, db=store)) as url:
        yield url


def _person(store: Engine, name: str, locale: str) -> tuple[int, str]:
    """A contact with every consent granted and one email message; (id, unsubscribe token)."""
    with store.begin() as conn:
        cid = conn.execute(
            insert(Contact)
            .values(external_id=name, email=f"{name}@example.com", locale=locale, attributes={})
            .returning(Contact.id)
        ).scalar_one()
        for channel in ("email", "sms"):
            for purpose in ("marketing", "transactional"):
                conn.execute(
                    insert(Consent).values(
                        contact_id=cid,
                        channel=channel,
                        purpose=purpose,
                        status="granted",
                        source="test",
                    )
                )
        mid = conn.execute(
            insert(Message)
            .values(
                idempotency_key=f"k-{name}",
                contact_id=cid,
                channel="email",
                to_address=f"{name}@example.com",
                status="sent",
                meta={"topic": "newsletter"},
            )
            .returning(Message.id)
        ).scalar_one()
    return cid, sign_token("u", str(mid), secret="test-secret")


def _topics(store: Engine, cid: int) -> dict[str, str]:
    with store.connect() as conn:
        return {
            f"{r.channel}:{r.topic}": r.status
            for r in conn.execute(
                select(
                    TopicSubscription.channel, TopicSubscription.topic, TopicSubscription.status
                ).where(TopicSubscription.contact_id == cid)
            )
        }


def _topic_audit(store: Engine, cid: int) -> list[tuple[str, str, str | None, str]]:
    with store.connect() as conn:
        return sorted(
            (f"{r.channel}:{r.topic}", r.status, r.previous_status, r.source)
            for r in conn.execute(
                select(
                    ConsentChange.channel,
                    ConsentChange.topic,
                    ConsentChange.status,
                    ConsentChange.previous_status,
                    ConsentChange.source,
                ).where(ConsentChange.contact_id == cid, ConsentChange.topic.is_not(None))
            )
        )


def test_preference_page_in_two_languages(live: str, store: Engine, browser: Any) -> None:
    ann, ann_token = _person(store, "ann", "en_GB")
    jan, jan_token = _person(store, "jan", "de_AT")  # de_AT -> de
    page = browser.new_page()
    # English: the topics of each channel, with their defaults
    page.goto(f"{live}/u/{ann_token}")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").inner_text() == "Your subscriptions"
    email = page.locator('fieldset[data-channel="email"]')
    assert email.get_by_text("Monthly newsletter").is_visible()
    assert email.get_by_text("Product updates").is_visible()
    assert email.get_by_text("Sales and discount codes, at most weekly.").is_visible()
    newsletter = page.get_by_label("Monthly newsletter")
    offers = email.get_by_label("Offers and discounts")
    assert newsletter.is_checked()  # opt-out: in until they leave
    assert not offers.is_checked()  # opt-in: out until they choose it
    sms = page.locator('fieldset[data-channel="sms"]')
    assert sms.get_by_label("Offers and discounts").is_visible()
    assert sms.get_by_text("Monthly newsletter").count() == 0  # email only
    assert page.get_by_role("button", name="Unsubscribe from “Monthly newsletter”")
    # a change, saved
    newsletter.uncheck()
    offers.check()
    page.get_by_role("button", name="Save my choices").click()
    page.wait_for_load_state()
    assert "Your choices are saved." in page.locator("body").inner_text()
    assert _topics(store, ann) == {"email:newsletter": "revoked", "email:offers": "granted"}
    assert _topic_audit(store, ann) == [
        ("email:newsletter", "revoked", "granted", "unsubscribe:preferences"),
        ("email:offers", "granted", None, "unsubscribe:preferences"),
    ]
    # shown as saved
    page.goto(f"{live}/u/{ann_token}")
    assert not page.get_by_label("Monthly newsletter").is_checked()
    assert (
        page.locator('fieldset[data-channel="email"]')
        .get_by_label("Offers and discounts")
        .is_checked()
    )

    # German: the same page in the contact's language
    page.goto(f"{live}/u/{jan_token}")
    assert page.locator("html").get_attribute("lang") == "de"
    assert page.locator("h1").inner_text() == "Ihre Abonnements"
    assert page.get_by_label("Monatlicher Newsletter").is_checked()
    assert (
        page.locator('fieldset[data-channel="email"]')
        .get_by_text("Neuigkeiten und Angebote")
        .is_visible()
    )
    page.get_by_label("Produktneuheiten").uncheck()
    page.get_by_role("button", name="Auswahl speichern").click()
    page.wait_for_load_state()
    assert "Ihre Auswahl ist gespeichert." in page.locator("body").inner_text()
    assert _topics(store, jan) == {"email:product_updates": "revoked"}
    page.goto(f"{live}/u/{jan_token}")
    page.get_by_role("button", name="Von allem abmelden").click()
    page.wait_for_load_state()
    assert "Sie sind von allem abgemeldet." in page.locator("body").inner_text()
    with store.connect() as conn:
        left = {
            (r.channel, r.purpose): r.status
            for r in conn.execute(
                select(Consent.channel, Consent.purpose, Consent.status).where(
                    Consent.contact_id == jan
                )
            )
        }
    assert set(left.values()) == {"revoked"} and len(left) == 4
    # offers is opt-in and was never chosen: leaving it writes nothing
    assert _topics(store, jan) == {
        "email:newsletter": "revoked",
        "email:product_updates": "revoked",
    }
    sources = {s for *_, s in _topic_audit(store, jan)}
    assert sources == {"unsubscribe:preferences", "unsubscribe:leave"}

"""Languages end to end: a journey sends each contact the locale variant their locale picks,
through the real SMTP adapter to the aiosmtpd simulator, and records the locale on the message
(SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from tests.channels.conftest import smtp_sim
from tests.channels.helpers import FAST
from tests.journeys.test_engine import SETTINGS, T0, add_contacts, journey
from tests.simulators.smtp import SmtpSimulator
from tidings.channels.outbox import OutboxChannel
from tidings.channels.smtp import SmtpChannel
from tidings.crm.models import Contact, Enrollment, Message
from tidings.journeys.dispatch import Dispatcher
from tidings.journeys.engine import JourneyEngine
from tidings.templates.render import Renderer

__all__ = ["smtp_sim"]

HELLO = """
name: hello_locales
trigger: {type: api}
steps:
  - {id: hello, type: email, template: welcome}
"""

SHIPPED = """
name: shipped_locales
trigger: {type: api}
settings: {transactional: true}
steps:
  - {id: shipped, type: sms, template: order_shipped}
"""

PEOPLE = [
    {"external_id": "ola", "email": "ola@example.com", "phone": "+48601234567",
     "first_name": "Ola", "locale": "pl_PL", "timezone": "Europe/Warsaw"},
    {"external_id": "jonas", "email": "jonas@example.com", "phone": "+4366412345678",
     "first_name": "Jonas", "locale": "de_AT", "timezone": "Europe/Vienna"},
    {"external_id": "joao", "email": "joao@example.com", "phone": "+5511912345678",
     "first_name": "João", "locale": "pt_BR", "timezone": "America/Sao_Paulo"},
]  # fmt: skip


def _parts(message: EmailMessage) -> tuple[str, str]:
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def _lang(html: str) -> str:
    found = re.search(r"<html[^>]*\slang=\"([^\"]+)\"", html)
    assert found, html[:300]
    return found.group(1)


def test_each_contact_receives_the_variant_of_their_locale(
    store: Engine, smtp_sim: SmtpSimulator
) -> None:
    ids = add_contacts(store, PEOPLE)
    engine = JourneyEngine(db=store, settings=SETTINGS)
    version = engine.register(journey(HELLO))
    engine.enroll_contacts(version, ids.values(), entry_key="api:1", now=T0)
    assert engine.tick("hello_locales", now=T0).messages == 3
    smtp = SmtpChannel(
        host="127.0.0.1", port=smtp_sim.port, security="none", timeout=5.0, retry=FAST
    )
    dispatcher = Dispatcher(
        db=store, renderer=Renderer(settings=SETTINGS), channels={"email": smtp}, settings=SETTINGS
    )
    assert dispatcher.dispatch(now=T0).sent == 3
    received = {r.rcpt_tos[0]: r.message for r in smtp_sim.messages}

    polish = received["ola@example.com"]
    html, text = _parts(polish)
    assert polish["Subject"] == "Witamy w Tidings Shop, Ola!"
    assert _lang(html) == "pl"
    assert "Dziękujemy za rejestrację" in text and "Witaj, Ola!" in html
    assert "Wypisz się" in html and "Unsubscribe" not in html  # the footer partial follows

    german = received["jonas@example.com"]  # de_AT -> de
    html, text = _parts(german)
    assert german["Subject"] == "Willkommen bei Tidings Shop, Jonas!"
    assert _lang(html) == "de"
    assert "Danke, dass Sie sich angemeldet haben" in text and "Abmelden" in html
    assert "Unsubscribe" not in html

    brazilian = received["joao@example.com"]  # pt_BR -> pt -> default (English)
    html, text = _parts(brazilian)
    assert brazilian["Subject"] == "Welcome to Tidings Shop, João!"
    assert _lang(html) == "en"
    assert "Thanks for joining us" in text and "Unsubscribe" in html

    with Session(store) as session:
        recorded = {
            external_id: locale
            for external_id, locale in session.execute(
                select(Contact.external_id, Message.locale).join(
                    Contact, Contact.id == Message.contact_id
                )
            )
        }
    assert recorded == {"ola": "pl", "jonas": "de", "joao": "en"}


def test_sms_follows_the_locale(store: Engine, tmp_path: Path) -> None:
    ids = add_contacts(store, PEOPLE)
    engine = JourneyEngine(db=store, settings=SETTINGS)
    version = engine.register(journey(SHIPPED))
    engine.enroll_contacts(version, ids.values(), entry_key="api:1", now=T0)
    engine.tick("shipped_locales", now=T0)
    order = {"number": "10042", "carrier": "DHL", "tracking_url": "https://t.example/1"}
    with Session(store) as session, session.begin():
        session.execute(
            update(Enrollment).values(context={"trigger": {"properties": {"order": order}}})
        )
    outbox = OutboxChannel(folder=tmp_path / "outbox")
    dispatcher = Dispatcher(
        db=store, renderer=Renderer(settings=SETTINGS), channels={"sms": outbox}, settings=SETTINGS
    )
    assert dispatcher.dispatch(now=T0).sent == 3
    bodies = {
        record["to"]: record["body"]
        for record in (json.loads(p.read_text()) for p in (tmp_path / "outbox").glob("*.json"))
    }
    assert bodies["+48601234567"].startswith("Ola, Twoje zamowienie nr 10042")
    assert bodies["+4366412345678"].startswith("Jonas, Ihre Tidings-Shop-Bestellung Nr. 10042")
    assert bodies["+5511912345678"].startswith("João, your Tidings Shop order #10042")
    with Session(store) as session:
        assert sorted(str(x) for x in session.scalars(select(Message.locale))) == ["de", "en", "pl"]

"""Double opt-in end to end, through a real ``tidings serve`` process on a loopback port.

A contact signs up through ``POST /v1/contacts`` with email consent; the project's
``channels/email.yaml`` requires confirmation for ``api:*``, so the consent is ``pending`` and
the confirmation email lands in the outbox. The link taken from that email is followed with an
HTTP client: the GET page changes nothing, its button (a POST) grants the consent, both steps
are in the audit trail, and ``consent.confirmed`` starts a journey. An expired link is refused.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message as MimeMessage
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select, update

from tests.conftest import FIXTURE_PROJECT
from tidings.config import Settings
from tidings.crm.models import Consent, ConsentChange, Contact, Enrollment, Event, OptInRequest
from tidings.crm.types import utcnow
from tidings.journeys.runtime import Runtime
from tidings.web.apikeys import create_key

CONFIRMED_JOURNEY = """\
name: confirmed_welcome
trigger: {type: event, event: consent.confirmed}
steps:
  - {id: hello, type: email, template: welcome}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, root)
    (root / "channels").mkdir(exist_ok=True)
    (root / "channels" / "email.yaml").write_text(
        "provider: outbox\nfrom: hello@shop.example\n"
        "double_opt_in:\n  sources: ['api:*']\n  expires: 2 days\n",
        encoding="utf-8",
    )
    (root / "journeys" / "confirmed_welcome.yaml").write_text(CONFIRMED_JOURNEY, encoding="utf-8")
    return root


@pytest.fixture
def served(project: Path, store_url: str, store: Engine) -> Iterator[tuple[str, str]]:
    """``tidings serve`` in a subprocess on a free port; yields (base URL, API key)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TIDINGS_PROJECT_DIR": str(project),
        "TIDINGS_DATABASE_URL": store_url,
        "TIDINGS_SECRET_KEY": "serve-secret",
        "TIDINGS_PUBLIC_URL": base,
        "TIDINGS_FREQUENCY_CAP": "off",
        "TIDINGS_QUIET_HOURS": "off",
    }
    env.pop("TIDINGS_REDIS_URL", None)
    settings = Settings(project_dir=project, database_url=store_url, secret_key="serve-secret")
    runtime = Runtime.from_settings(settings, db=store)
    runtime.load(project / "journeys" / "confirmed_welcome.yaml")
    key = create_key(store, name="signup").secret
    tidings = Path(sys.executable).with_name("tidings")
    process = subprocess.Popen(
        [str(tidings), "serve", "--port", str(port)],
        env=env,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"tidings serve did not start:\n{output}")
            time.sleep(0.2)
        yield base, key
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def _sign_up(base: str, key: str, external_id: str, address: str, locale: str = "en_GB") -> None:
    response = httpx.post(
        f"{base}/v1/contacts",
        json={
            "external_id": external_id,
            "email": address,
            "first_name": "Nina",
            "locale": locale,
            "consent_email": "yes",
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["confirmations"] == 1


def _confirmation_link(outbox: Path, address: str, base: str) -> str:
    """The confirmation link of the email the outbox channel wrote for ``address``."""
    for path in sorted(outbox.glob("*.eml")):
        parsed: MimeMessage = email.message_from_bytes(path.read_bytes())
        if address not in str(parsed["To"]):
            continue
        assert "confirm" in str(parsed["Subject"]).lower()
        for part in parsed.walk():
            if part.get_content_type() in ("text/html", "text/plain"):
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                found = re.search(re.escape(base) + r"/confirm/[A-Za-z0-9_.-]+", payload.decode())
                if found:
                    return found.group(0)
    raise AssertionError(f"no confirmation email to {address} in {sorted(outbox.iterdir())}")


def _email_marketing(store: Engine, contact_id: int) -> str:
    with store.connect() as conn:
        return str(
            conn.execute(
                select(Consent.status).where(
                    Consent.contact_id == contact_id,
                    Consent.channel == "email",
                    Consent.purpose == "marketing",
                )
            ).scalar_one()
        )


def _contact(store: Engine, external_id: str) -> int:
    with store.connect() as conn:
        return int(
            conn.execute(select(Contact.id).where(Contact.external_id == external_id)).scalar_one()
        )


def _audit(store: Engine, contact_id: int) -> list[tuple[str, str | None, str]]:
    with store.connect() as conn:
        return [
            (r.status, r.previous_status, r.source)
            for r in conn.execute(
                select(ConsentChange.status, ConsentChange.previous_status, ConsentChange.source)
                .where(ConsentChange.contact_id == contact_id, ConsentChange.channel == "email")
                .order_by(ConsentChange.id)
            )
        ]


def test_double_opt_in_through_tidings_serve(served, project, store) -> None:
    base, key = served
    _sign_up(base, key, "N1", "nina@example.com")
    nina = _contact(store, "N1")
    assert _email_marketing(store, nina) == "pending"
    assert _audit(store, nina) == [("pending", None, "api:signup")]

    link = _confirmation_link(project / "outbox", "nina@example.com", base)
    with httpx.Client(timeout=30) as browser:
        page = browser.get(link)
        assert page.status_code == 200
        assert "<form" in page.text and 'method="post"' in page.text
        assert _email_marketing(store, nina) == "pending"  # a GET (a link scanner) confirms nothing

        done = browser.post(link, data={"confirm": "yes"})
        assert done.status_code == 200 and "confirmed" in done.text
        assert _email_marketing(store, nina) == "granted"
        assert _audit(store, nina) == [
            ("pending", None, "api:signup"),
            ("granted", "pending", "optin:confirmed"),
        ]
        # the journey that starts on confirmation has the contact
        with store.connect() as conn:
            events = (
                conn.execute(select(Event.name).where(Event.contact_id == nina)).scalars().all()
            )
            enrolled = conn.execute(
                select(Enrollment.id).where(Enrollment.contact_id == nina)
            ).all()
        assert events == ["consent.confirmed"] and len(enrolled) == 1

        # confirming again changes nothing and starts nothing twice
        again = browser.post(link, data={"confirm": "yes"})
        assert again.status_code == 200 and "already" in again.text
        assert len(_audit(store, nina)) == 2
        with store.connect() as conn:
            assert len(conn.execute(select(Enrollment.id)).all()) == 1

        # an edited link is not a link
        assert browser.get(link[:-3] + "AAA").status_code == 404

    # signing up again while granted asks nothing more
    response = httpx.post(
        f"{base}/v1/contacts",
        json={"external_id": "N1", "email": "nina@example.com", "consent_email": "yes"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200 and "confirmations" not in response.json()


def test_an_expired_confirmation_link_is_refused(served, project, store) -> None:
    base, key = served
    _sign_up(base, key, "L1", "lars@example.de", locale="de_DE")
    lars = _contact(store, "L1")
    link = _confirmation_link(project / "outbox", "lars@example.de", base)
    with store.begin() as conn:  # two days and a minute later
        conn.execute(
            update(OptInRequest)
            .where(OptInRequest.contact_id == lars)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    with httpx.Client(timeout=30) as browser:
        page = browser.get(link)
        assert page.status_code == 410
        assert "abgelaufen" in page.text and 'lang="de"' in page.text  # the contact's language
        refused = browser.post(link, data={"confirm": "yes"})
        assert refused.status_code == 410
    assert _email_marketing(store, lars) == "pending"
    assert _audit(store, lars) == [("pending", None, "api:signup")]
    with store.connect() as conn:
        status = conn.execute(
            select(OptInRequest.status).where(OptInRequest.contact_id == lars)
        ).scalar_one()
        assert conn.execute(select(Event.id).where(Event.contact_id == lars)).first() is None
    assert status == "expired"

"""Fixtures for the web edge: a signing key, settings, the app on a real store, seed rows, the
app behind a real server on loopback and a real browser."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from tests.conftest import REQUIRE_SERVICES
from tidings.config import Settings
from tidings.crm.db import make_engine, upgrade
from tidings.crm.models import Base, Consent, Contact, Message
from tidings.web.app import create_app

CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")
TWILIO_TOKEN = "twilio-test-auth-token"
PUBLIC_URL = "https://hooks.example.com"


class Signer:
    """Signs SendGrid webhook bodies as SendGrid does: ECDSA P-256, SHA-256, base64 DER."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            "Content-Type": "application/json",
        }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated store per module and database (creating one per test is slow here)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('web') / 'tidings.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    server = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield url
    server.drop(url)


@pytest.fixture(scope="module")
def module_store(module_store_url: str) -> Iterator[Engine]:
    engine = make_engine(module_store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store_url(module_store_url: str) -> str:
    return module_store_url


@pytest.fixture
def store(module_store: Engine) -> Engine:
    """The module's store, emptied before each test (every table but alembic's)."""
    with module_store.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return module_store


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer()


def make_settings(store_url: str, signer: Signer, tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": store_url,
        "secret_key": "test-secret",
        "sendgrid_webhook_public_key": signer.public_key,
        "twilio_auth_token": TWILIO_TOKEN,
        "public_url": PUBLIC_URL,
        "outbox_dir": str(tmp_path / "outbox"),
        "frequency_cap": "off",
        "quiet_hours": "off",
        "redis_url": None,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def settings(store_url: str, signer: Signer, tmp_path: Path) -> Settings:
    return make_settings(store_url, signer, tmp_path)


@pytest.fixture
def client(settings: Settings, store: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db=store), follow_redirects=False) as test_client:
        yield test_client


def seed(db: Engine) -> dict[str, int]:
    """Two contacts with consents and one email + one SMS message each; returns names -> ids."""
    with db.begin() as conn:
        ids: dict[str, int] = {}
        for i, name in enumerate(("ann", "bob")):
            ids[name] = conn.execute(
                insert(Contact)
                .values(
                    external_id=f"C{i}",
                    email=f"{name}@example.com",
                    phone=f"+1415555000{i}",
                    first_name=name.title(),
                    attributes={},
                )
                .returning(Contact.id)
            ).scalar_one()
            for channel in ("email", "sms"):
                for purpose in ("marketing", "transactional"):
                    conn.execute(
                        insert(Consent).values(
                            contact_id=ids[name],
                            channel=channel,
                            purpose=purpose,
                            status="granted",
                            source="test",
                        )
                    )
            for channel, address in (("email", f"{name}@example.com"), ("sms", f"+1415555000{i}")):
                ids[f"{name}_{channel}"] = conn.execute(
                    insert(Message)
                    .values(
                        idempotency_key=f"k-{name}-{channel}",
                        contact_id=ids[name],
                        channel=channel,
                        provider="sendgrid" if channel == "email" else "twilio",
                        to_address=address,
                        status="sent",
                        provider_message_id=f"SM{name}{channel}",
                        meta={},
                    )
                    .returning(Message.id)
                ).scalar_one()
    return ids


@pytest.fixture
def seeded(store: Engine) -> dict[str, int]:
    return seed(store)


def _missing(what: str) -> None:
    message = f"{what}; install it: apt-get install -y chromium && pip install playwright"
    if REQUIRE_SERVICES:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's binary, never a download) driven by Playwright; missing:
    skipped outside CI, failed in CI."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        _missing(f"Chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed")
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()

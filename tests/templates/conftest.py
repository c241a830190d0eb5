from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FIXTURE_PROJECT
from tidings.config import Settings
from tidings.templates.render import Renderer

SHIPPED = FIXTURE_PROJECT / "templates"
SECRET = "test-secret-key"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        public_url="https://t.example.com",
        unsubscribe_mailto="unsub@example.com",
        sms_segment_limit=2,
    )


@pytest.fixture
def renderer(settings: Settings) -> Renderer:
    return Renderer(SHIPPED, settings, secret_key=SECRET)


def write_email(root: Path, name: str, body: str, front: str = "subject: Hi") -> Path:
    (root / "email").mkdir(parents=True, exist_ok=True)
    path = root / "email" / f"{name}.mjml"
    path.write_text(f"---\n{front}\n---\n{body}", encoding="utf-8")
    return path


def mjml(inner: str) -> str:
    return (
        "<mjml><mj-body><mj-section><mj-column>\n"
        f"{inner}\n"
        "</mj-column></mj-section></mj-body></mjml>\n"
    )

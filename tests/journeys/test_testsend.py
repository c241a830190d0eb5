"""Test sends and seed copies through the real SMTP adapter and the aiosmtpd simulator: marked,
stored apart, never in reports, caps, consent or enrollments (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tests.channels.conftest import smtp_sim
from tests.conftest import FIXTURE_PROJECT
from tests.journeys.test_engine import T0, add_contacts
from tests.simulators.smtp import SmtpSimulator
from tidings.analytics.report import journey_report
from tidings.cli import app
from tidings.cli import journeys as journeys_cli
from tidings.config import Settings, get_settings
from tidings.crm.models import Consent, ConsentChange, Enrollment, Message, TestSend
from tidings.errors import InputError
from tidings.journeys.loader import load_text
from tidings.journeys.runtime import Runtime
from tidings.journeys.testsend import test_send as send_test
from tidings.yamlfile import InputErrors

__all__ = ["smtp_sim"]
runner = CliRunner()

HELLO = """\
name: hello_test
trigger: {type: api}
steps:
  - id: hello
    type: email
    template: welcome
    experiment:
      variants: [{name: A, weight: 50}, {name: B, weight: 50}]
  - {id: pause, type: wait, duration: 1 day}
"""

BROADCAST = """\
name: monday_news
trigger: {type: schedule, cron: "0 10 * * 1", timezone: UTC, segment: new_signups}
settings: {reentry: always}
seeds: [seed1@example.com, Seed2@Example.com, "+4915123456789"]
steps:
  - id: news
    type: email
    template: winback
    context: {offer: {percent: 15, code: SEEDS15, expires_at: "2026-12-31T23:59:00+00:00"}}
"""

PEOPLE = [
    {"external_id": "ola", "email": "ola@example.com", "first_name": "Ola", "locale": "pl_PL",
     "timezone": "Europe/Warsaw"},
    {"external_id": "ben", "email": "ben@example.com", "first_name": "Ben", "locale": "en_GB",
     "timezone": "Europe/London"},
]  # fmt: skip


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, root)
    (root / "journeys" / "hello_test.yaml").write_text(HELLO)
    (root / "journeys" / "monday_news.yaml").write_text(BROADCAST)
    return root


def settings_for(project: Path, store_url: str, sim: SmtpSimulator, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "project_dir": project,
        "database_url": store_url,
        "email_channel": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": sim.port,
        "smtp_security": "none",
        "secret_key": "test-sends",
        "quiet_hours": "off",
        "frequency_cap": "1 per 7 days",
    }
    return Settings(**{**values, **extra})


def received(sim: SmtpSimulator) -> dict[str, Any]:
    with sim.lock:
        return {r.rcpt_tos[0]: r.message for r in sim.messages}


def books(db: Engine, name: str) -> dict[str, Any]:
    """Everything a test send must leave as it was."""
    with db.connect() as conn:
        report = journey_report(conn, name).to_dict()
    report.pop("generated_at", None)
    with Session(db) as session:
        counts = {
            table.__name__: session.scalar(select(func.count()).select_from(table))
            for table in (Message, Enrollment, Consent, ConsentChange)
        }
    return {"report": report, **counts}


def test_test_send_arrives_marked_and_leaves_the_books_alone(
    store_url: str, project: Path, smtp_sim: SmtpSimulator
) -> None:
    runtime = Runtime.from_settings(settings_for(project, store_url, smtp_sim))
    db = runtime.db
    ids = add_contacts(db, PEOPLE)
    version = runtime.load(project / "journeys" / "hello_test.yaml")
    runtime.engine.enroll_contacts(version, [ids["ben"]], entry_key="api:1", now=T0)
    runtime.engine.tick("hello_test", now=T0)
    assert runtime.dispatcher.dispatch(now=T0).sent == 1
    before = books(db, "hello_test")
    assert before["report"]["steps"][-1]["sent"] == 1  # the journey's total

    results = send_test(
        runtime,
        journey="hello_test",
        step="hello",
        to="qa1@example.com, QA2@Example.com",
        contact="ola",
        variant="B",
    )
    assert [(r.to, r.status, r.locale) for r in results] == [
        ("qa1@example.com", "sent", "pl"),
        ("qa2@example.com", "sent", "pl"),
    ]
    inbox = received(smtp_sim)
    for address, result in zip(["qa1@example.com", "qa2@example.com"], results, strict=True):
        mail = inbox[address]
        assert mail["Subject"] == "[TEST] Ola, oto 10% zniżki na pierwsze zamówienie"  # B, pl
        assert mail["X-Tidings-Test"] == "test"
        assert mail["X-Tidings-Message-Id"] == f"test-{result.id}"
        html = mail.get_body(("html",)).get_content()
        assert re.search(r'<html[^>]*lang="pl"', html)
    assert "ola@example.com" not in inbox

    with Session(db) as session:
        rows = session.scalars(select(TestSend).order_by(TestSend.id)).all()
        assert [(r.kind, r.status, r.contact_id, r.variant, r.locale) for r in rows] == [
            ("test", "sent", ids["ola"], "B", "pl")
        ] * 2
        assert rows[0].subject == "[TEST] Ola, oto 10% zniżki na pierwsze zamówienie"
    assert books(db, "hello_test") == before  # reports, outbox, enrollments, consent

    # the frequency cap (1 per 7 days) never saw the test: Ola's real message still goes out
    runtime.engine.enroll_contacts(version, [ids["ola"]], entry_key="api:2", now=T0)
    stats = runtime.engine.tick("hello_test", now=T0 + timedelta(minutes=1))
    assert (stats.messages, dict(stats.held)) == (1, {})

    # without --contact: the first sample contact (ada, en_GB -> the English default)
    sample = send_test(runtime, journey="hello_test", step="hello", to="qa3@example.com")
    assert sample[0].subject == "[TEST] Welcome to Tidings Shop, Ada!"
    with Session(db) as session:
        row = session.get(TestSend, sample[0].id)
        assert row is not None and row.contact_id is None and row.detail == {"sample": "ada"}


def test_test_send_refuses_bad_input_before_sending(
    store_url: str, project: Path, smtp_sim: SmtpSimulator
) -> None:
    runtime = Runtime.from_settings(settings_for(project, store_url, smtp_sim))

    def refused(**kwargs: Any) -> InputError:
        with pytest.raises(InputError) as caught:
            send_test(runtime, **{"journey": "hello_test", "step": "hello", **kwargs})
        return caught.value

    error = refused(to="qa@example.com,not-an-address")
    assert error.location == "--to" and "'not-an-address' is neither an email" in error.message
    error = refused(to="+4915123456789")
    assert "is a phone number, and step 'hello' sends email" in error.message
    error = refused(to="qa@example.com", step="pause")
    assert "step 'pause' of journey 'hello_test' is a wait step" in error.message
    assert error.hint == "send steps: hello"
    error = refused(to="qa@example.com", variant="C")
    assert "step 'hello' has no variant 'C'" in error.message and error.hint == "variants: A, B"
    error = refused(to="qa@example.com", journey="nope")
    assert "no journey named 'nope'" in error.message and "hello_test" in str(error.hint)
    assert smtp_sim.messages == []
    with Session(runtime.db) as session:
        assert session.scalar(select(func.count()).select_from(TestSend)) == 0


@pytest.fixture
def cli_env(
    store_url: str, project: Path, smtp_sim: SmtpSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    for key, value in {
        "TIDINGS_PROJECT_DIR": str(project),
        "TIDINGS_DATABASE_URL": store_url,
        "TIDINGS_EMAIL_CHANNEL": "smtp",
        "TIDINGS_SMTP_HOST": "127.0.0.1",
        "TIDINGS_SMTP_PORT": str(smtp_sim.port),
        "TIDINGS_SMTP_SECURITY": "none",
        "TIDINGS_SECRET_KEY": "cli-test",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(journeys_cli.console, "width", 200)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_test_send_command(cli_env: None, smtp_sim: SmtpSimulator) -> None:
    result = runner.invoke(
        app, ["journey", "test-send", "hello_test", "--step", "hello", "--to", "qa@example.com"]
    )
    assert result.exit_code == 0, result.output
    assert "qa@example.com" in result.output and "[TEST] Welcome to Tidings Shop, Ada!" in (
        result.output
    )
    assert received(smtp_sim)["qa@example.com"]["X-Tidings-Test"] == "test"
    bad = runner.invoke(
        app, ["journey", "test-send", "hello_test", "--step", "hello", "--to", "qa@@x"]
    )
    assert bad.exit_code != 0 and str(bad.exception).startswith("--to: invalid email 'qa@@x'")
    assert len(smtp_sim.messages) == 1


def test_seeds_get_one_marked_copy_per_broadcast_run(
    store_url: str, project: Path, smtp_sim: SmtpSimulator
) -> None:
    runtime = Runtime.from_settings(settings_for(project, store_url, smtp_sim, frequency_cap="off"))
    db = runtime.db
    people = [
        {"external_id": f"c{i}", "email": f"c{i}@example.com", "first_name": f"C{i}"}
        for i in range(4)
    ]
    ids = list(add_contacts(db, people).values())
    version = runtime.load(project / "journeys" / "monday_news.yaml")
    run = "run:2026-03-02T10:00"
    # a run spread over two batches (two ticks, as two workers would): seeds get one copy
    runtime.engine.enroll_contacts(version, ids[:2], entry_key=run, now=T0)
    runtime.engine.tick("monday_news", now=T0)
    assert runtime.dispatcher.dispatch(now=T0).sent == 2
    runtime.engine.enroll_contacts(version, ids[2:], entry_key=run, now=T0)
    runtime.engine.tick("monday_news", now=T0)
    assert runtime.dispatcher.dispatch(now=T0).sent == 2

    inbox = received(smtp_sim)
    assert sorted(inbox) == sorted(
        [f"c{i}@example.com" for i in range(4)] + ["seed1@example.com", "seed2@example.com"]
    )
    for seed in ("seed1@example.com", "seed2@example.com"):
        assert inbox[seed]["X-Tidings-Test"] == "seed"
        assert inbox[seed]["Subject"].startswith("[TEST] ")
        assert str(inbox[seed]["X-Tidings-Message-Id"]).startswith("test-")
    assert not inbox["c0@example.com"]["Subject"].startswith("[TEST]")
    assert inbox["c0@example.com"]["X-Tidings-Test"] is None

    # the next run: one more copy each
    runtime.engine.enroll_contacts(version, ids[:1], entry_key="run:2026-03-09T10:00", now=T0)
    runtime.engine.tick("monday_news", now=T0 + timedelta(days=7))
    runtime.dispatcher.dispatch(now=T0 + timedelta(days=7))
    with Session(db) as session:
        seeds = session.execute(
            select(TestSend.to_address, TestSend.status, TestSend.kind).order_by(TestSend.id)
        ).all()
        assert (
            sorted(seeds)
            == [("seed1@example.com", "sent", "seed")] * 2
            + [("seed2@example.com", "sent", "seed")] * 2
        )  # the phone number is for SMS steps: this journey has none
        assert session.scalar(select(func.count()).select_from(Message)) == 5
    with db.connect() as conn:
        report = journey_report(conn, "monday_news").to_dict()
    assert report["steps"][-1]["sent"] == 5  # contacts only


def test_seeds_are_validated_with_file_line_and_key() -> None:
    with pytest.raises(InputErrors) as caught:
        load_text(BROADCAST.replace("Seed2@Example.com", "seed2@@example"), source="b.yaml")
    message = str(caught.value)
    assert "b.yaml:4:" in message and "seeds[1]" in message and "seed2@@example" in message
    with pytest.raises(InputErrors) as caught:
        load_text(
            BROADCAST.replace("{type: schedule, cron: \"0 10 * * 1\", timezone: UTC, "
                              "segment: new_signups}", "{type: api}"),
            source="b.yaml",
        )  # fmt: skip
    assert "b.yaml:4:" in str(caught.value) and "not 'schedule'" in str(caught.value)
    with pytest.raises(InputErrors, match=r"seeds\[1\]: seed1@example.com is listed twice"):
        load_text(BROADCAST.replace("Seed2@Example.com", "SEED1@example.com"), source="b.yaml")


def test_a_journey_without_seeds_keeps_its_version_hash() -> None:
    from tidings.journeys.loader import version_hash

    plain = load_text(HELLO, source="h.yaml")
    assert version_hash(plain) == version_hash(plain.model_copy(update={"seeds": []}))
    with_seeds = load_text(BROADCAST, source="b.yaml")
    assert version_hash(with_seeds) != version_hash(with_seeds.model_copy(update={"seeds": []}))


def test_a_journey_names_the_template_not_a_locale_variant(project: Path) -> None:
    from tidings.journeys.runtime import references
    from tidings.templates.render import Renderer

    refs = references(Renderer(project / "templates", Settings(project_dir=project)), set())
    with pytest.raises(InputErrors) as caught:
        load_text(HELLO.replace("template: welcome", "template: welcome.de"), source="h.yaml",
                  references=refs)  # fmt: skip
    assert "no email template named 'welcome.de'" in str(caught.value)
    assert "name the template ('welcome')" in str(caught.value)

"""Double opt-in in the store: which grants become pending, the request and its queued
confirmation email, confirmation and expiry, each step audited (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from tests.conftest import FIXTURE_PROJECT
from tidings.config import Settings
from tidings.crm.consent import ConsentWish
from tidings.crm.importer import import_contacts
from tidings.crm.models import Consent, ConsentChange, Message, OptInRequest, Suppression
from tidings.crm.optin import OptInPolicy, apply_consents, confirm
from tidings.crm.types import utcnow
from tidings.errors import InputError
from tidings.templates.tracking import verify_token

CSV = (
    "external_id,email,consent_email,consent_sms\n"
    "A1,ann@example.com,yes,yes\n"
    "B1,bob@example.com,no,\n"
)


def _settings(tmp_path: Path, store_url: str, **extra: object) -> Settings:
    return Settings(
        project_dir=tmp_path,
        database_url=store_url,
        secret_key="s3cret",
        public_url="https://t.example.com",
        **extra,  # type: ignore[arg-type]
    )


def _consents(store: Engine) -> dict[tuple[int, str], str]:
    with store.connect() as conn:
        return {
            (r.contact_id, r.channel): r.status
            for r in conn.execute(
                select(Consent.contact_id, Consent.channel, Consent.status).where(
                    Consent.purpose == "marketing"
                )
            )
        }


def test_an_import_from_a_confirming_source_asks_first(
    store: Engine, store_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "signups.csv"
    path.write_text(CSV)
    settings = _settings(tmp_path, store_url, double_opt_in_sources=["import:sign*"])
    report = import_contacts(path, engine=store, settings=settings)
    assert len(report.confirmations) == 1 and report.to_dict()["confirmations"] == 1
    with store.connect() as conn:
        (request,) = conn.execute(select(OptInRequest)).mappings().all()
        message = conn.execute(select(Message)).mappings().one()
        audit = conn.execute(
            select(ConsentChange.channel, ConsentChange.status, ConsentChange.detail)
            .where(ConsentChange.contact_id == request["contact_id"])
            .order_by(ConsentChange.channel)
        ).all()
    ann = request["contact_id"]
    # email waits for confirmation; SMS (no confirmation email for it) and a "no" apply at once
    assert _consents(store)[(ann, "email")] == "pending"
    assert _consents(store)[(ann, "sms")] == "granted"
    assert sorted(_consents(store).values()) == ["granted", "pending", "revoked"]
    assert [(c, s) for c, s, _ in audit] == [("email", "pending"), ("sms", "granted")]
    assert audit[0][2] == {"optin_request": request["id"]}
    assert request["source"] == "import:signups.csv" and request["status"] == "pending"
    assert request["message_id"] == message["id"] == report.confirmations[0]
    assert request["expires_at"] - request["created_at"] == timedelta(days=7)
    assert (message["status"], message["purpose"], message["template"]) == (
        "queued",
        "transactional",
        "confirm_subscription",
    )
    assert message["to_address"] == "ann@example.com" and message["journey_id"] is None
    url = message["meta"]["context"]["confirm_url"]
    assert url.startswith("https://t.example.com/confirm/")
    token = verify_token(url.rsplit("/", 1)[1], secret="s3cret", kind="v")
    assert token.message_id == str(request["id"])

    # the same file again: nothing new is asked or sent while the request is open
    again = import_contacts(path, engine=store, settings=settings)
    assert again.confirmations == []
    with store.connect() as conn:
        assert len(conn.execute(select(OptInRequest.id)).all()) == 1

    # confirmed: granted, audited, once
    with store.begin() as conn:
        assert confirm(conn, request["id"]).status == "confirmed"
    with store.begin() as conn:
        assert confirm(conn, request["id"]).status == "already"
        assert confirm(conn, request["id"] + 99).status == "unknown"
    assert _consents(store)[(ann, "email")] == "granted"
    with store.connect() as conn:
        last = conn.execute(
            select(ConsentChange.status, ConsentChange.previous_status, ConsentChange.source)
            .where(ConsentChange.contact_id == ann, ConsentChange.channel == "email")
            .order_by(ConsentChange.id)
        ).all()
    assert [tuple(r) for r in last] == [
        ("pending", None, "import:signups.csv"),
        ("granted", "pending", "optin:confirmed"),
    ]


def test_other_sources_and_no_policy_grant_at_once(store: Engine, store_url: str, tmp_path):
    path = tmp_path / "shop.csv"
    path.write_text(CSV)
    report = import_contacts(
        path, engine=store, settings=_settings(tmp_path, store_url, double_opt_in_sources=["api:*"])
    )
    assert report.confirmations == []
    assert sorted(_consents(store).values()) == ["granted", "granted", "revoked"]


def test_expiry_and_a_suppressed_address(store: Engine, store_url: str, tmp_path) -> None:
    policy = OptInPolicy.from_settings(
        _settings(
            tmp_path, store_url, double_opt_in_sources=["form"], double_opt_in_expires="1 hour"
        )
    )
    assert policy is not None and policy.expires_seconds == 3600
    with store.begin() as conn:
        from tidings.crm.models import Contact

        ids = [
            conn.execute(
                insert(Contact)
                .values(email=f"{n}@example.com", attributes={})
                .returning(Contact.id)
            ).scalar_one()
            for n in ("cy", "dee")
        ]
        conn.execute(
            insert(Suppression).values(
                channel="email", address="dee@example.com", reason="bounce", source="t", detail={}
            )
        )
        then = utcnow() - timedelta(hours=2)
        outcome = apply_consents(
            conn,
            [ConsentWish(i, "email", "marketing", "granted") for i in ids],
            source="form",
            policy=policy,
            now=then,
        )
    assert len(outcome.requested) == 2 and len(outcome.messages) == 1  # dee's is held
    with store.connect() as conn:
        held = conn.execute(
            select(Message.status, Message.error).where(Message.to_address == "dee@example.com")
        ).one()
    assert tuple(held) == ("held", "suppressed")
    with store.begin() as conn:  # two hours later: the link of one hour has expired
        assert confirm(conn, outcome.requested[0]).status == "expired"
    with store.connect() as conn:
        status = conn.execute(
            select(OptInRequest.status).where(OptInRequest.id == outcome.requested[0])
        ).scalar_one()
    assert status == "expired" and _consents(store)[(ids[0], "email")] == "pending"
    # a new sign-up after expiry asks again
    with store.begin() as conn:
        fresh = apply_consents(
            conn,
            [ConsentWish(ids[0], "email", "marketing", "granted")],
            source="form",
            policy=policy,
        )
    assert len(fresh.messages) == 1


def test_double_opt_in_in_the_channel_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TIDINGS_DOUBLE_OPT_IN_SOURCES", raising=False)
    (tmp_path / "channels").mkdir()
    email = tmp_path / "channels" / "email.yaml"
    email.write_text(
        "provider: outbox\ndouble_opt_in:\n  sources: ['api:*']\n  expires: 48 hours\n"
    )
    settings = Settings(project_dir=tmp_path)
    assert settings.double_opt_in_sources == ["api:*"]
    assert settings.double_opt_in_expires == "48 hours"
    email.write_text("provider: outbox\ndouble_opt_in:\n  sources: ['api:*']\n  expire: 2 days\n")
    with pytest.raises(InputError) as caught:
        Settings(project_dir=tmp_path)
    assert f"{email}:4" in str(caught.value) and "expire" in str(caught.value)
    email.write_text("provider: outbox\ndouble_opt_in:\n  sources: ['api:*']\n  expires: soon\n")
    with pytest.raises(InputError) as caught:
        Settings(project_dir=tmp_path)
    assert f"{email}:4" in str(caught.value) and "bad duration 'soon'" in str(caught.value)


def test_the_tick_sends_confirmations_left_queued(store: Engine, store_url: str, tmp_path):
    """An import queues the confirmation (a command that did not send it, or a retry): the
    next tick sends it, once."""
    from tidings.channels.outbox import OutboxChannel
    from tidings.journeys.running import tick_all
    from tidings.journeys.runtime import Runtime

    project = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, project)
    path = tmp_path / "signups.csv"
    path.write_text(CSV)
    settings = _settings(project, store_url, double_opt_in_sources=["import:*"])
    settings = settings.model_copy(update={"outbox_dir": tmp_path / "outbox"})
    report = import_contacts(path, engine=store, settings=settings)
    outbox = OutboxChannel(folder=tmp_path / "outbox")
    runtime = Runtime.from_settings(settings, db=store, channels={"email": outbox, "sms": outbox})
    tick_all(runtime)
    tick_all(runtime)
    with store.connect() as conn:
        status = conn.execute(
            select(Message.status).where(Message.id == report.confirmations[0])
        ).scalar_one()
    assert status == "sent"
    (sent,) = (tmp_path / "outbox").glob("*.eml")
    text = sent.read_text()
    assert "Please confirm your subscription" in text and "https://t.example.com/confirm/" in text

"""Twilio status callbacks and inbound SMS, signed with the SDK's RequestValidator."""

from __future__ import annotations

from urllib.parse import urlencode

from sqlalchemy import select
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from tests.web.conftest import PUBLIC_URL, TWILIO_TOKEN
from tidings.crm.models import Consent, ConsentChange, Message, MessageEvent, Suppression

VALIDATOR = RequestValidator(TWILIO_TOKEN)
REVOKED = {"marketing": "revoked", "transactional": "revoked"}
GRANTED = {"marketing": "granted", "transactional": "granted"}


def post_signed(client, path: str, form: dict[str, str], token: str = TWILIO_TOKEN):
    signature = RequestValidator(token).compute_signature(PUBLIC_URL + path, form)
    return client.post(
        path,
        content=urlencode(form),
        headers={
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def status_form(status: str, code: str | None = None) -> dict[str, str]:
    form = {
        "MessageSid": "SMbobsms",
        "MessageStatus": status,
        "To": "+14155550001",
        "AccountSid": "AC1",
    }
    if code:
        form["ErrorCode"] = code
    return form


def test_statuses_apply_by_rank_and_twice_is_once(client, store, seeded) -> None:
    path = f"/webhooks/twilio/status?tidings_message_id={seeded['bob_sms']}"
    for status in ("sent", "delivered", "sent", "delivered"):
        assert post_signed(client, path, status_form(status)).status_code == 200
    with store.connect() as conn:
        status = conn.execute(
            select(Message.status).where(Message.id == seeded["bob_sms"])
        ).scalar_one()
        events = conn.execute(
            select(MessageEvent.type).where(MessageEvent.message_id == seeded["bob_sms"])
        ).scalars()
        assert status == "delivered"  # the late "sent" did not move it back
        assert sorted(events) == ["delivered", "sent"]


def test_21610_is_recorded_and_suppresses(client, store, seeded) -> None:
    path = "/webhooks/twilio/status"  # no id in the URL: found by the provider message id
    assert post_signed(client, path, status_form("undelivered", "21610")).status_code == 200
    with store.connect() as conn:
        row = conn.execute(
            select(Message.status, Message.error).where(Message.id == seeded["bob_sms"])
        ).one()
        suppression = conn.execute(select(Suppression.address, Suppression.source)).one()
    assert row.status == "failed" and "21610" in row.error
    assert tuple(suppression) == ("+14155550001", "twilio:21610")


def test_forged_and_tampered_status_writes_nothing(client, store, seeded) -> None:
    path = f"/webhooks/twilio/status?tidings_message_id={seeded['bob_sms']}"
    assert post_signed(client, path, status_form("delivered"), token="wrong").status_code == 403
    signature = VALIDATOR.compute_signature(PUBLIC_URL + path, status_form("sent"))
    tampered = client.post(
        path,
        content=urlencode(status_form("delivered")),
        headers={
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert tampered.status_code == 403
    other_message = path.replace(str(seeded["bob_sms"]), str(seeded["ann_sms"]))
    moved = client.post(
        other_message,
        content=urlencode(status_form("sent")),
        headers={
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert moved.status_code == 403
    with store.connect() as conn:
        assert conn.execute(select(MessageEvent.id)).first() is None


def inbound(client, body: str, sid: str, phone: str = "+14155550001"):
    form = {"From": phone, "To": "+15005550006", "Body": body, "MessageSid": sid}
    return post_signed(client, "/webhooks/twilio/inbound", form)


def sms_consents(store, contact_id: int) -> dict[str, str]:
    with store.connect() as conn:
        return dict(
            conn.execute(
                select(Consent.purpose, Consent.status).where(
                    Consent.contact_id == contact_id, Consent.channel == "sms"
                )
            ).all()
        )


def test_stop_revokes_both_purposes_start_restores_help_answers(client, store, seeded) -> None:
    response = inbound(client, " stop ", "SMin1")
    assert response.status_code == 200 and "<Message>" not in response.text
    assert sms_consents(store, seeded["bob"]) == {
        "marketing": "revoked",
        "transactional": "revoked",
    }
    assert sms_consents(store, seeded["ann"]) == {
        "marketing": "granted",
        "transactional": "granted",
    }
    assert inbound(client, "Stop", "SMin1").status_code == 200  # Twilio retried: once
    help_reply = inbound(client, "HELP", "SMin2")
    assert "<Message>Reply STOP to unsubscribe" in help_reply.text
    assert inbound(client, "UNSTOP", "SMin3").status_code == 200
    assert sms_consents(store, seeded["bob"]) == {
        "marketing": "granted",
        "transactional": "granted",
    }
    with store.connect() as conn:
        trail = conn.execute(
            select(ConsentChange.purpose, ConsentChange.status, ConsentChange.source)
            .where(ConsentChange.contact_id == seeded["bob"])
            .order_by(ConsentChange.id)
        ).all()
    assert [tuple(t) for t in trail] == [
        ("marketing", "revoked", "twilio:STOP"),
        ("transactional", "revoked", "twilio:STOP"),
        ("marketing", "granted", "twilio:UNSTOP"),
        ("transactional", "granted", "twilio:UNSTOP"),
    ]


def test_every_stop_word_revokes(client, store, seeded) -> None:
    for i, word in enumerate(["STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"]):
        assert inbound(client, "START", f"SMs{i}").status_code == 200
        assert inbound(client, word, f"SMw{i}").status_code == 200
        assert sms_consents(store, seeded["bob"])["marketing"] == "revoked", word


def test_a_replayed_stop_or_start_changes_nothing(client, store, seeded) -> None:
    """Same bytes, same valid signature (Twilio signs no timestamp): the MessageSid is the key.
    A replayed old START once resubscribed a contact who had opted out since."""
    assert inbound(client, "STOP", "SMr1").status_code == 200
    assert inbound(client, "START", "SMr2").status_code == 200
    assert inbound(client, "STOP", "SMr3").status_code == 200
    assert sms_consents(store, seeded["bob"]) == REVOKED
    assert inbound(client, "START", "SMr2").status_code == 200  # the replay
    assert sms_consents(store, seeded["bob"]) == REVOKED
    assert inbound(client, "START", "SMr4").status_code == 200  # a genuine START
    assert inbound(client, "STOP", "SMr1").status_code == 200  # an old STOP replayed
    assert inbound(client, "STOP", "SMr3").status_code == 200
    assert sms_consents(store, seeded["bob"]) == GRANTED
    with store.connect() as conn:
        trail = conn.execute(
            select(ConsentChange.status, ConsentChange.detail)
            .where(ConsentChange.contact_id == seeded["bob"], ConsentChange.purpose == "marketing")
            .order_by(ConsentChange.id)
        ).all()
    assert [(t.status, t.detail["message_sid"]) for t in trail] == [
        ("revoked", "SMr1"),
        ("granted", "SMr2"),
        ("revoked", "SMr3"),
        ("granted", "SMr4"),
    ]


def test_an_older_start_read_late_from_the_buffer_does_not_undo_a_newer_stop(store, seeded):
    """The buffer can hand the store a STOP before an older START (a pending entry claimed
    late): a change applies only if it is newer than the contact's last SMS consent change."""
    from tidings.web.items import TwilioInbound
    from tidings.web.store import apply_items

    def item(body: str, sid: str, at: str) -> TwilioInbound:
        form = {"From": "+14155550001", "Body": body, "MessageSid": sid}
        return TwilioInbound(form=form, received_at=at)

    apply_items(store, [item("STOP", "SMo2", "2026-11-24T10:00:02+00:00")])
    stats = apply_items(store, [item("START", "SMo1", "2026-11-24T10:00:01+00:00")])
    assert stats.consent_changes == 0 and stats.stored == 1  # kept as an event, not applied
    assert sms_consents(store, seeded["bob"]) == REVOKED
    apply_items(store, [item("START", "SMo3", "2026-11-24T10:00:03+00:00")])
    assert sms_consents(store, seeded["bob"]) == GRANTED

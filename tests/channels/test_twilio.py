"""Twilio adapter through the official SDK against the local Messages API simulator."""

from __future__ import annotations

import time
import urllib.parse

from sqlalchemy import Engine, select
from twilio.rest import Client  # type: ignore[import-untyped]

from tests.channels.helpers import FAST, message_rows, outbox_rows, sms
from tests.simulators.twilio import TwilioSimulator, num_segments
from tidings.channels import get_channel
from tidings.channels.ratelimit import LocalRateLimiter
from tidings.channels.record import record_results
from tidings.channels.twilio import TwilioChannel
from tidings.config import Settings
from tidings.crm.db import session_scope
from tidings.crm.models import Suppression

CALLBACK = "https://hooks.shop.example/twilio/status?src=tidings"


def channel(sim: TwilioSimulator, **kwargs: object) -> TwilioChannel:
    options: dict[str, object] = {
        "account_sid": sim.account_sid,
        "auth_token": sim.auth_token,
        "api_base": sim.url,
        "status_callback": CALLBACK,
        "retry": FAST,
    }
    options.update(kwargs)
    return TwilioChannel(**options)  # type: ignore[arg-type]


def test_form_fields_are_what_twilio_documents(twilio_sim: TwilioSimulator) -> None:
    results = channel(twilio_sim).send_batch([sms(1), sms(2, body="Grüße 🎉")])

    assert [r.status for r in results] == ["accepted", "accepted"]
    forms = {r.parsed["To"]: r for r in twilio_sim.creates}
    first = forms["+14155550001"]
    assert first.path == f"/2010-04-01/Accounts/{twilio_sim.account_sid}/Messages.json"
    assert first.headers["content-type"] == "application/x-www-form-urlencoded"
    assert first.headers["authorization"].startswith("Basic ")
    callback = urllib.parse.urlsplit(first.parsed["StatusCallback"])
    assert urllib.parse.parse_qs(callback.query) == {
        "src": ["tidings"],
        "tidings_message_id": ["1"],
    }
    assert first.parsed == {
        "To": "+14155550001",
        "From": "+15005550006",
        "Body": "Your order 1 has shipped",
        "StatusCallback": first.parsed["StatusCallback"],
    }
    by_to = {m["to"]: m for m in twilio_sim.messages}
    assert results[0].provider_message_id == by_to["+14155550001"]["sid"]
    assert (results[0].provider_message_id or "").startswith("SM")
    assert results[1].raw["num_segments"] == "1"


def test_messaging_service_instead_of_a_number(twilio_sim: TwilioSimulator) -> None:
    adapter = channel(twilio_sim, messaging_service_sid="MG" + "a" * 32, status_callback=None)

    [result] = adapter.send_batch([sms(1, from_number=None)])

    assert result.status == "accepted"
    [create] = twilio_sim.creates
    assert create.parsed == {
        "To": "+14155550001",
        "Body": "Your order 1 has shipped",
        "MessagingServiceSid": "MG" + "a" * 32,
    }


def test_21610_fails_and_suppresses(twilio_sim: TwilioSimulator, store: Engine) -> None:
    twilio_sim.unsubscribed.add("+14155550002")
    ids = outbox_rows(store, ["+14155550001", "+14155550002", "+1415"], channel="sms")
    messages = [
        sms(1, message_id=ids[0]),
        sms(2, message_id=ids[1]),
        sms(3, message_id=ids[2], to="+1415"),
    ]

    results = channel(twilio_sim).send_batch(messages)
    with session_scope(store) as session:
        counts = record_results(session=session, results=results)

    assert [r.status for r in results] == ["accepted", "failed", "failed"]
    assert results[1].suppress and results[1].error_code == "21610"
    assert not results[2].suppress and results[2].error_code == "21211"
    assert counts == {"sent": 1, "failed": 2, "retry": 0, "suppressed": 1}
    rows = message_rows(store)
    assert rows[ids[1]].status == "failed"
    assert rows[ids[1]].error == (
        "twilio 400 code 21610: Unable to create record: Attempt to send to unsubscribed recipient"
    )
    assert "Invalid 'To' Phone Number: +1415" in (rows[ids[2]].error or "")
    with session_scope(store) as session:
        [suppression] = session.scalars(select(Suppression)).all()
        assert (suppression.channel, suppression.address) == ("sms", "+14155550002")
        assert suppression.reason == "unsubscribed" and suppression.source == "provider:twilio"
    # the same result recorded again does not duplicate the suppression
    with session_scope(store) as session:
        record_results(session=session, results=results[1:2])
    with session_scope(store) as session:
        assert len(session.scalars(select(Suppression)).all()) == 1


def test_429_and_5xx_are_retried_and_nothing_is_sent_twice(twilio_sim: TwilioSimulator) -> None:
    twilio_sim.fail_next(2, status=429, retry_after=0.2)
    twilio_sim.fail_next(1, status=500)
    messages = [sms(n) for n in range(1, 9)]

    started = time.monotonic()
    results = channel(twilio_sim, concurrency=4).send_batch(messages)

    assert time.monotonic() - started >= 0.2
    assert [r.status for r in results] == ["accepted"] * 8
    assert sorted(m["to"] for m in twilio_sim.messages) == sorted(m.to for m in messages)
    assert len(twilio_sim.creates) == 11
    assert {r.provider_message_id for r in results} == {m["sid"] for m in twilio_sim.messages}


def test_rate_limit_per_sender_spaces_the_calls(twilio_sim: TwilioSimulator) -> None:
    limiter = LocalRateLimiter({"twilio:+15005550006": 20}, burst={"twilio:+15005550006": 1})
    adapter = channel(twilio_sim, rate_limiter=limiter, concurrency=4)

    started = time.monotonic()
    results = adapter.send_batch([sms(n) for n in range(1, 7)])

    assert [r.status for r in results] == ["accepted"] * 6
    assert time.monotonic() - started >= 5 / 20 * 0.9  # one free token, then 20/s


def test_list_endpoint_pages_like_twilio_for_reconciliation(twilio_sim: TwilioSimulator) -> None:
    adapter = channel(twilio_sim)
    adapter.send_batch([sms(1), sms(2)])
    adapter.send_batch([sms(1, message_id="3", body="again")])
    client = Client(twilio_sim.account_sid, twilio_sim.auth_token)
    client.api.base_url = twilio_sim.url

    found = client.messages.list(to="+14155550001", page_size=1)

    assert [m.body for m in found] == ["again", "Your order 1 has shipped"]  # newest first
    assert len(client.messages.list(from_="+15005550006")) == 3
    assert all(m.status == "queued" for m in found)


def test_factory_reads_the_settings(twilio_sim: TwilioSimulator) -> None:
    settings = Settings(
        twilio_account_sid=twilio_sim.account_sid,
        twilio_auth_token=twilio_sim.auth_token,
        twilio_api_base=twilio_sim.url,
        twilio_from_number="+15005550006",
    )
    adapter = get_channel("twilio", settings)

    [result] = adapter.send_batch([sms(1, from_number=None)])

    assert result.status == "accepted"
    assert twilio_sim.creates[0].parsed["From"] == "+15005550006"


def test_segment_counts_in_the_simulator() -> None:
    assert num_segments("a" * 160) == 1
    assert num_segments("a" * 161) == 2
    assert num_segments("€" * 80) == 1 and num_segments("€" * 81) == 2  # extension: 2 septets
    assert num_segments("é" * 160) == 1  # é is in the GSM-7 basic table
    assert num_segments("ú" * 70) == 1 and num_segments("ú" * 71) == 2  # ú is not: UCS-2


def test_every_exception_the_sdk_raises_is_mapped(twilio_sim: TwilioSimulator) -> None:
    """Checked against twilio.base (version.py, page.py) and twilio.http: after the request
    may have reached Twilio, an unreadable answer is retryable and in doubt (reconcile asks)."""
    import requests
    from twilio.base.exceptions import (  # type: ignore[import-untyped]
        TwilioException,
        TwilioRestException,
    )

    from tidings.channels.types import ProviderRetryableError

    adapter = channel(twilio_sim)
    doubtful = [
        TwilioException("Unable to fetch page"),
        requests.exceptions.ChunkedEncodingError("broken"),
        ValueError("Expecting value: line 1 column 1"),
        requests.exceptions.ReadTimeout("read timed out"),
    ]
    for error in doubtful:
        mapped = adapter.classify(error)
        assert isinstance(mapped, ProviderRetryableError) and mapped.in_doubt, error
    refused = adapter.classify(requests.exceptions.ConnectionError("Connection refused"))
    assert isinstance(refused, ProviderRetryableError) and not refused.in_doubt
    bad = adapter.classify(TwilioRestException(400, "uri", "invalid To", code=21211))
    assert bad is not None and not bad.retryable
    assert adapter.classify(KeyError("a bug")) is None  # not ours to hide: it propagates

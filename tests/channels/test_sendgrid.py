"""SendGrid adapter through the official SDK against the local /v3/mail/send simulator."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import pytest
from sqlalchemy import Engine, select

from tests.channels.helpers import FAST, email, message_rows, outbox_rows
from tests.simulators.sendgrid import SendGridSimulator
from tidings.channels import get_channel
from tidings.channels.record import record_results
from tidings.channels.sendgrid import SendGridChannel
from tidings.config import Settings
from tidings.crm.db import session_scope
from tidings.crm.models import Suppression
from tidings.errors import ConfigurationError


def channel(sim: SendGridSimulator, **kwargs: object) -> SendGridChannel:
    options: dict[str, object] = {"api_key": sim.api_key, "host": sim.url, "retry": FAST}
    options.update(kwargs)
    return SendGridChannel(**options)  # type: ignore[arg-type]


KEEPALIVE = pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "sdk-urllib"])


@KEEPALIVE
def test_payload_is_what_sendgrid_documents(
    sendgrid_sim: SendGridSimulator, keepalive: bool
) -> None:
    results = channel(sendgrid_sim, keepalive=keepalive).send_batch(
        [email(1), email(2, from_name=None)]
    )

    assert [r.status for r in results] == ["accepted", "accepted"]
    wire = {r.parsed["custom_args"]["tidings_message_id"]: r for r in sendgrid_sim.sends}
    first = wire["1"]
    assert first.headers["authorization"] == "Bearer SG.test-key"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["user-agent"].startswith("sendgrid/")
    assert first.parsed == {
        "personalizations": [{"to": [{"email": "user1@example.com"}]}],
        "from": {"email": "news@shop.example", "name": "Shop News"},
        "reply_to": {"email": "help@shop.example"},
        "subject": "Hello 1",
        "content": [
            {"type": "text/plain", "value": "Hello 1"},
            {"type": "text/html", "value": "<p>Hello <b>1</b></p>"},
        ],
        "custom_args": {"journey": "welcome", "tidings_message_id": "1"},
        "headers": {
            "List-Unsubscribe": "<https://t.shop.example/u/1>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "categories": ["welcome", "journey:welcome"],
    }
    assert wire["2"].parsed["from"] == {"email": "news@shop.example"}
    # the X-Message-Id of the 202 is what we keep; the simulator can answer "did you get 1?"
    accepted = sendgrid_sim.accepted("1")
    assert accepted is not None and results[0].provider_message_id == accepted.x_message_id
    assert results[0].attempts == 1


@KEEPALIVE
def test_429_waits_for_retry_after_and_sends_each_message_once(
    sendgrid_sim: SendGridSimulator, keepalive: bool
) -> None:
    sendgrid_sim.fail_next(3, status=429, retry_after=1)
    messages = [email(n) for n in range(1, 11)]

    started = time.monotonic()
    results = channel(sendgrid_sim, concurrency=4, keepalive=keepalive).send_batch(messages)
    elapsed = time.monotonic() - started

    assert [r.status for r in results] == ["accepted"] * 10
    assert [r.message_id for r in results] == [m.message_id for m in messages]
    assert elapsed >= 1.0  # Retry-After: 1 honoured, not the tiny backoff
    ids = [p.custom_args["tidings_message_id"] for p in sendgrid_sim.processed]
    assert sorted(ids, key=int) == [str(n) for n in range(1, 11)]  # none lost, none twice
    assert len(sendgrid_sim.sends) == 13
    assert sum(r.attempts for r in results) == 13


def test_5xx_is_retried_with_backoff(sendgrid_sim: SendGridSimulator) -> None:
    sendgrid_sim.fail_next(1, status=500)
    sendgrid_sim.fail_next(1, status=503)

    [result] = channel(sendgrid_sim).send_batch([email(1)])

    assert result.status == "accepted" and result.attempts == 3
    assert len(sendgrid_sim.processed) == 1


def test_retries_are_bounded(sendgrid_sim: SendGridSimulator) -> None:
    sendgrid_sim.fail_next(10, status=503)

    [result] = channel(sendgrid_sim).send_batch([email(1)])

    assert result.status == "retry" and result.attempts == FAST.max_attempts
    assert result.error is not None and result.error.startswith("sendgrid 503:")
    assert not result.in_doubt
    assert sendgrid_sim.processed == []


def test_retry_after_too_long_goes_back_to_the_engine(sendgrid_sim: SendGridSimulator) -> None:
    sendgrid_sim.fail_next(1, status=429, retry_after=120)

    [result] = channel(sendgrid_sim).send_batch([email(1)])

    assert result.status == "retry" and result.retry_after == 120 and result.attempts == 1


def test_400_is_permanent_and_recorded_with_the_reason(
    sendgrid_sim: SendGridSimulator, store: Engine
) -> None:
    ids = outbox_rows(store, ["good@example.com", "not-an-address"])
    messages = [email(1, message_id=ids[0], to="good@example.com")]
    messages.append(email(2, message_id=ids[1], to="not-an-address"))

    results = channel(sendgrid_sim).send_batch(messages)
    with session_scope(store) as session:
        counts = record_results(session=session, results=results)

    assert counts == {"sent": 1, "failed": 1, "retry": 0, "suppressed": 0}
    assert results[1].attempts == 1  # a 400 is not retried
    rows = message_rows(store)
    assert rows[ids[0]].status == "sent"
    assert rows[ids[0]].provider_message_id == results[0].provider_message_id
    assert rows[ids[0]].sent_at is not None and rows[ids[0]].attempts == 1
    failed = rows[ids[1]]
    assert failed.status == "failed" and failed.provider == "sendgrid"
    assert failed.error == (
        "sendgrid 400: Does not contain a valid address. (field personalizations.0.to.0.email)"
    )
    with session_scope(store) as session:
        assert session.scalars(select(Suppression)).all() == []


def test_too_many_categories_fail_before_the_call(sendgrid_sim: SendGridSimulator) -> None:
    message = replace(email(1), categories=tuple(f"c{i}" for i in range(11)))

    [result] = channel(sendgrid_sim).send_batch([message])

    assert result.status == "failed" and "at most 10" in (result.error or "")
    assert sendgrid_sim.requests == []


def test_wrong_api_key_is_a_configuration_error(sendgrid_sim: SendGridSimulator) -> None:
    with pytest.raises(ConfigurationError, match="TIDINGS_SENDGRID_API_KEY"):
        channel(sendgrid_sim, api_key="SG.wrong").send_batch([email(1)])


def test_unreachable_host_is_retryable_not_in_doubt() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        adapter = SendGridChannel(api_key="SG.x", host=f"http://127.0.0.1:{port}", retry=FAST)
        [result] = adapter.send_batch([email(1)])

    assert result.status == "retry" and not result.in_doubt
    assert "cannot connect" in (result.error or "")


def test_factory_reads_the_settings(sendgrid_sim: SendGridSimulator) -> None:
    settings = Settings(
        sendgrid_api_key=sendgrid_sim.api_key,
        sendgrid_host=sendgrid_sim.url,
        sendgrid_concurrency=3,
    )
    adapter = get_channel("sendgrid", settings)

    assert isinstance(adapter, SendGridChannel) and adapter.concurrency == 3
    assert [r.status for r in adapter.send_batch([email(1)])] == ["accepted"]


def test_keepalive_reuses_one_connection_per_worker(sendgrid_sim: SendGridSimulator) -> None:
    adapter = channel(sendgrid_sim, concurrency=4)
    results = adapter.send_batch([email(n) for n in range(1, 41)])
    adapter.close()

    assert [r.status for r in results] == ["accepted"] * 40
    assert adapter.pool is not None and 1 <= adapter.pool.opened <= 4
    assert len(sendgrid_sim.processed) == 40

"""The shared send sequence: order of results, retries, what propagates."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.channels.helpers import FAST, sms
from tidings.channels.base import Channel, RetryPolicy, parse_retry_after
from tidings.channels.types import (
    OutboundSms,
    ProviderPermanentError,
    ProviderRetryableError,
    SendResult,
)


class Scripted(Channel[OutboundSms]):
    """Answers from a script per message id: 'ok', 'retry', 'doubt', 'perm' or 'bug'."""

    provider = "scripted"

    def __init__(self, script: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.script = script
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def build_payload(self, message: OutboundSms) -> str:
        return message.body

    def post(self, message: OutboundSms, payload: Any) -> str:
        with self.lock:
            self.calls.append(message.message_id)
            step = self.script.get(message.message_id, ["ok"]).pop(0)
        if step == "retry":
            raise ProviderRetryableError("busy", provider=self.provider, status=503)
        if step == "doubt":
            raise TimeoutError("read timed out")
        if step == "perm":
            raise ProviderPermanentError("nope", provider=self.provider, status=400, code="x1")
        if step == "bug":
            raise KeyError("bug")
        return f"pm-{message.message_id}"

    def parse_result(self, message: OutboundSms, response: Any) -> SendResult:
        return SendResult(
            message.message_id, "accepted", self.provider, provider_message_id=response
        )

    def classify(self, error: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        if isinstance(error, TimeoutError):
            return ProviderRetryableError(str(error), provider=self.provider, in_doubt=True)
        return None


def test_results_keep_the_order_of_the_messages_under_concurrency() -> None:
    channel = Scripted({"3": ["retry", "ok"], "5": ["perm"]}, retry=FAST)
    channel.concurrency = 4
    results = channel.send_batch([sms(n) for n in range(1, 9)])

    assert [r.message_id for r in results] == [str(n) for n in range(1, 9)]
    assert [r.status for r in results].count("accepted") == 7
    assert results[2].attempts == 2 and results[4].error == "scripted 400 code x1: nope"


def test_in_doubt_is_never_retried_in_process() -> None:
    channel = Scripted({"1": ["doubt", "ok"]}, retry=FAST)
    [result] = channel.send_batch([sms(1)])

    assert result.status == "retry" and result.in_doubt and channel.calls == ["1"]


def test_an_unclassified_exception_is_a_bug_and_propagates() -> None:
    with pytest.raises(KeyError):
        Scripted({"1": ["bug"]}, retry=FAST).send_batch([sms(1)])


def test_a_bug_under_concurrency_stops_the_batch_once_every_thread_stopped() -> None:
    channel = Scripted({"2": ["bug"]}, retry=FAST)
    channel.concurrency = 4
    with pytest.raises(KeyError):
        channel.send_batch([sms(n) for n in range(1, 201)])
    sent = list(channel.calls)

    # besides "1" and "2", at most the messages the three other threads held at that moment
    assert "2" in sent and len(sent) <= 2 + 3
    assert channel.send_batch([sms(300)])[0].status == "accepted"  # the threads serve on
    assert channel.calls[: len(sent)] == sent and len(channel.calls) == len(sent) + 1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base=1.0, cap=5.0)
    assert 0.5 <= policy.delay(1) <= 1.0
    assert 2.0 <= policy.delay(3) <= 4.0
    assert 2.5 <= policy.delay(10) <= 5.0
    assert policy.delay(2, retry_after=7.0) == 7.0


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None

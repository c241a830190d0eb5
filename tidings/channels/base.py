"""The send sequence every channel shares (STYLE.md 1).

``Channel.send_batch`` owns the order of things for each message: rate limit -> build payload ->
post -> parse result; an exception from ``post`` goes through ``classify`` into a retryable or
permanent error; retryable ones are tried again with exponential backoff and jitter (a
Retry-After from the provider wins, and pauses every worker of this adapter), up to
``RetryPolicy.max_attempts``. A provider that cannot be reached at all (connection refused, no
route, connect timeout: errors marked ``unreachable``) opens the adapter's *circuit* once
``max_attempts`` connection attempts in a row have failed: for ``circuit_cooldown`` seconds every
further message comes back at once as ``retry`` with that cause, untried, so a relay that is down
costs one round of retries, not one round per message. Any answer from the provider closes it.
A provider module fills in only ``build_payload``, ``post``,
``parse_result`` and ``classify``. HTTP providers set ``concurrency`` > 1 and the batch runs
on a bounded thread pool; results come back in the order of the messages, one each.
A provider that keeps no record we could query after a crash (SMTP) sets ``record_each``: the
dispatcher then hands it one message at a time and commits each result before the next, so at
most one message per worker is ever in doubt.

>>> from tidings.channels.outbox import OutboxChannel
>>> import tempfile
>>> from tidings.channels.types import OutboundSms
>>> with OutboxChannel(folder=tempfile.mkdtemp()) as channel:
...     [r.status for r in channel.send_batch([OutboundSms("7", "k7", "+14155550100", "Hi")])]
['accepted']
"""

from __future__ import annotations

import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

from tidings.channels.ratelimit import LocalRateLimiter, RateLimiter
from tidings.channels.types import (
    Outbound,
    ProviderPermanentError,
    ProviderRetryableError,
    SendResult,
)

M = TypeVar("M", bound=Outbound)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries: ``base * 2**(n-1)`` seconds, half of it jittered, capped at ``cap``.

    A Retry-After longer than ``max_retry_after`` is not waited for in process: the message
    comes back as ``retry`` with ``retry_after`` set, and the engine schedules it.
    """

    max_attempts: int = 4
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 60.0
    circuit_cooldown: float = 30.0
    """Seconds the circuit stays open after ``max_attempts`` failed connections in a row."""

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(
            max_attempts=settings.send_max_attempts,
            base=settings.send_backoff_base,
            cap=settings.send_backoff_max,
            max_retry_after=settings.send_max_retry_after,
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


class Channel(ABC, Generic[M]):
    """Base of every adapter. Subclasses set ``provider`` and fill in the four hooks."""

    provider: ClassVar[str]
    concurrency: int = 1
    #: True when ``lookup`` can never tell (no queryable provider record): the dispatcher
    #: records each result before the next message goes out, not once per batch.
    record_each: ClassVar[bool] = False

    def __init__(
        self,
        *,
        rate_limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate_limiter = rate_limiter or LocalRateLimiter({})
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._hold_lock = threading.Lock()
        self._hold_until = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._circuit_lock = threading.Lock()
        self._unreachable_in_a_row = 0
        self._open_until = 0.0
        self._open_cause: ProviderRetryableError | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> Channel[Any]:
        """The adapter configured from ``Settings`` (``overrides`` win); what ``get_channel``
        calls. Every registered provider fills it in."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from settings")

    # -- the hooks a provider module fills in --------------------------------------------
    @abstractmethod
    def build_payload(self, message: M) -> Any:
        """What goes on the wire for ``message`` (built once, reused by retries)."""

    @abstractmethod
    def post(self, message: M, payload: Any) -> Any:
        """Hand the payload to the provider; return its raw response, raise what it raises."""

    @abstractmethod
    def parse_result(self, message: M, response: Any) -> SendResult:
        """An ``accepted`` result from the provider's response."""

    @abstractmethod
    def classify(self, error: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        """Map a provider exception to our errors; None means a bug: it propagates."""

    def lookup(self, messages: Sequence[M]) -> dict[str, str | None]:
        """Ask the provider whether it accepted ``messages`` (reconciliation after a crash).

        Returns ``message_id -> provider message id`` for those it has, ``-> None`` for those
        it certainly does not have (safe to send again). An id left out of the answer could not
        be told: the caller must leave that message in flight. The default knows nothing.
        """
        return {}

    def rate_key(self, message: M) -> str:
        return f"{self.provider}:{message.sender}"

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        """Acquire connections; called by ``send_batch`` (and ``__enter__``)."""

    def close(self) -> None:
        """Release connections (a subclass that overrides it calls ``super().close()``)."""
        self._stop_workers()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the sequence ---------------------------------------------------------------------
    def send_batch(self, messages: Sequence[M]) -> list[SendResult]:
        """Send every message; one ``SendResult`` per message, in the same order.

        With ``concurrency`` > 1 that many sending threads each take the next message not yet
        taken until none is left: one task a thread per batch (a future per message, each with
        its own ``Condition``, was ~7% of a broadcast worker's interpreter time). A message
        whose send raises (a bug: provider errors become results) stops the others from taking
        more; the error is raised here once every thread has stopped."""
        if not messages:
            return []
        self.open()
        if self.concurrency <= 1 or len(messages) == 1:
            return [self.send_one(message) for message in messages]
        results: list[SendResult | None] = [None] * len(messages)
        taking = threading.Lock()
        order = iter(range(len(messages)))
        failed = threading.Event()

        def take_and_send() -> None:
            while not failed.is_set():
                with taking:
                    index = next(order, None)
                if index is None:
                    return
                try:
                    results[index] = self.send_one(messages[index])
                except BaseException:
                    failed.set()
                    raise

        threads = min(self.concurrency, len(messages))
        pool = self._workers()
        tasks = [pool.submit(take_and_send) for _ in range(threads)]
        wait(tasks)  # none still sends when this returns or raises
        for task in tasks:
            task.result()
        return cast(list[SendResult], results)  # every slot filled: no task raised

    def _workers(self) -> ThreadPoolExecutor:
        """The adapter's sending threads: started once, kept across batches until ``close``."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.concurrency, thread_name_prefix=f"send-{self.provider}"
                )
            return self._pool

    def _stop_workers(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def send_one(self, message: M) -> SendResult:
        try:
            payload = self.build_payload(message)
        except ProviderPermanentError as error:
            return self._failed(message, error, attempts=0)
        attempt = 0
        while True:
            cause = self._circuit_open()
            if cause is not None:  # the provider is unreachable: do not even try
                return self._retry_later(message, cause, attempts=attempt)
            attempt += 1
            self._wait_for_hold()
            self.rate_limiter.acquire(self.rate_key(message))
            try:
                response = self.post(message, payload)
            except Exception as raw:
                problem = self._classified(raw)
                if problem is None:
                    raise
                if isinstance(problem, ProviderPermanentError):
                    self._reached()
                    return self._failed(message, problem, attempts=attempt)
                if problem.unreachable:
                    self._unreachable(problem)
                else:
                    self._reached()
                retry_after = problem.retry_after
                if (
                    self._circuit_open() is not None
                    or problem.in_doubt
                    or attempt >= self.retry.max_attempts
                    or (retry_after is not None and retry_after > self.retry.max_retry_after)
                ):
                    return self._retry_later(message, problem, attempts=attempt)
                delay = self.retry.delay(attempt, retry_after)
                if retry_after is not None:
                    self._hold(delay)
                else:
                    self._sleep(delay)
                continue
            self._reached()
            result = self.parse_result(message, response)
            return _with_attempts(result, attempt)

    # -- the circuit ----------------------------------------------------------------------
    def _unreachable(self, problem: ProviderRetryableError) -> None:
        """One more connection attempt failed; ``max_attempts`` in a row open the circuit."""
        with self._circuit_lock:
            self._unreachable_in_a_row += 1
            if self._unreachable_in_a_row >= self.retry.max_attempts:
                self._open_until = time.monotonic() + self.retry.circuit_cooldown
                self._open_cause = problem

    def _reached(self) -> None:
        """The provider answered (whatever it said): the circuit closes."""
        if self._unreachable_in_a_row or self._open_cause is not None:
            with self._circuit_lock:
                self._unreachable_in_a_row = 0
                self._open_until = 0.0
                self._open_cause = None

    def _circuit_open(self) -> ProviderRetryableError | None:
        """The cause while the circuit is open; None when a message may be tried (after the
        cooldown one is: it closes the circuit if it gets through, reopens it if not)."""
        with self._circuit_lock:
            if self._open_cause is not None and time.monotonic() < self._open_until:
                return self._open_cause
            return None

    # -- helpers --------------------------------------------------------------------------
    def _classified(self, raw: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        if isinstance(raw, ProviderRetryableError | ProviderPermanentError):
            return raw
        return self.classify(raw)

    def _hold(self, seconds: float) -> None:
        """Pause every worker of this adapter (the provider said Retry-After)."""
        with self._hold_lock:
            self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    def _wait_for_hold(self) -> None:
        while (remaining := self._hold_until - time.monotonic()) > 0:
            self._sleep(remaining)

    def _failed(self, message: M, error: ProviderPermanentError, *, attempts: int) -> SendResult:
        return SendResult(
            message_id=message.message_id,
            status="failed",
            provider=self.provider,
            channel=message.channel,
            to=message.to,
            error=_reason(error),
            error_code=error.code,
            attempts=attempts,
            suppress=error.suppress,
            suppress_reason=error.suppress_reason,
        )

    def _retry_later(
        self, message: M, error: ProviderRetryableError, *, attempts: int
    ) -> SendResult:
        return SendResult(
            message_id=message.message_id,
            status="retry",
            provider=self.provider,
            channel=message.channel,
            to=message.to,
            error=_reason(error),
            error_code=error.code,
            retry_after=error.retry_after,
            attempts=attempts,
            in_doubt=error.in_doubt,
        )


def _reason(error: ProviderRetryableError | ProviderPermanentError) -> str:
    parts = [str(error.status)] if error.status is not None else []
    if error.code is not None and str(error.code) != str(error.status):
        parts.append(f"code {error.code}")
    prefix = f"{error.provider} {' '.join(parts)}".strip()
    return f"{prefix}: {error.reason}"


def _with_attempts(result: SendResult, attempts: int) -> SendResult:
    if result.attempts == attempts:
        return result
    from dataclasses import replace

    return replace(result, attempts=attempts)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())

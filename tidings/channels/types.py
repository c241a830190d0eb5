"""What the engine hands to a channel, what it gets back, and the errors in between.

``message_id`` is our own id (``messages.id`` of the outbox row, as ``str``). Every adapter
carries it to the provider (SendGrid ``custom_args.tidings_message_id``, Twilio's status callback
query, SMTP ``X-Tidings-Message-Id``) so webhooks and reconciliation can find the row again.

>>> email = OutboundEmail(message_id="42", idempotency_key="j1:s1:c9", to="ada@example.com",
...     from_email="news@shop.example", subject="Hi", html="<p>Hi</p>", text="Hi")
>>> SendResult.failed(email, provider="sendgrid", error="invalid address").status
'failed'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tidings.errors import PermanentError, RetryableError

MESSAGE_ID_ARG = "tidings_message_id"
"""The key our message id travels under (SendGrid custom_args, Twilio callback query)."""

Status = Literal["accepted", "failed", "retry"]


@dataclass(frozen=True, slots=True)
class OutboundEmail:
    """One personalised email, already rendered."""

    message_id: str
    idempotency_key: str
    to: str
    from_email: str
    subject: str
    html: str | None = None
    text: str | None = None
    from_name: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    reply_to: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    locale: str | None = None  # the template variant's locale (recorded on the message)

    channel: Literal["email"] = "email"

    @property
    def sender(self) -> str:
        return self.from_email


@dataclass(frozen=True, slots=True)
class OutboundSms:
    """One SMS, already rendered. ``to`` is E.164; give a from number or a messaging service."""

    message_id: str
    idempotency_key: str
    to: str
    body: str
    from_number: str | None = None
    messaging_service_sid: str | None = None
    locale: str | None = None  # the template variant's locale (recorded on the message)

    channel: Literal["sms"] = "sms"

    @property
    def sender(self) -> str:
        return self.from_number or self.messaging_service_sid or ""


Outbound = OutboundEmail | OutboundSms


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one message: exactly one per message handed to ``send_batch``.

    ``status``: ``accepted`` (the provider took it), ``failed`` (permanent; ``error`` holds the
    provider's reason), ``retry`` (retryable and the in-process attempts ran out, or the
    Retry-After was too long to wait here). ``in_doubt`` marks a retry where the provider may
    already have the message (a timeout after the request left): reconcile before resending.
    ``suppress`` asks the engine to add a suppression for ``to`` (Twilio 21610, hard bounce).
    """

    message_id: str
    status: Status
    provider: str
    channel: str = "email"
    to: str = ""
    provider_message_id: str | None = None
    error: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    attempts: int = 1
    suppress: bool = False
    suppress_reason: str | None = None
    in_doubt: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(
        cls, message: Outbound, *, provider: str, error: str, attempts: int = 1
    ) -> SendResult:
        return cls(
            message_id=message.message_id,
            status="failed",
            provider=provider,
            channel=message.channel,
            to=message.to,
            error=error,
            attempts=attempts,
        )


class ProviderRetryableError(RetryableError):
    """A provider said "not now" (429, 5xx) or the connection failed.

    ``in_doubt``: the request may have reached the provider (timeout, dropped reply), so an
    in-process retry could send twice; the base class hands it back instead of retrying.
    ``unreachable``: no connection could be made (refused, no route, connect timeout): nothing
    was sent; enough of these in a row open the adapter's circuit (``channels.base``).
    """

    def __init__(
        self,
        reason: str,
        *,
        provider: str,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        in_doubt: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(
            reason, retry_after=retry_after, provider=provider, status=status, code=code
        )
        self.provider = provider
        self.status = status
        self.code = code
        self.reason = reason
        self.in_doubt = in_doubt
        self.unreachable = unreachable


class ProviderPermanentError(PermanentError):
    """A provider refused the message for good (400, invalid address, unsubscribed recipient).

    ``suppress`` with ``suppress_reason``: the address must not be tried again on this channel.
    """

    def __init__(
        self,
        reason: str,
        *,
        provider: str,
        status: int | None = None,
        code: str | None = None,
        suppress: bool = False,
        suppress_reason: str | None = None,
    ) -> None:
        super().__init__(reason, provider=provider, status=status, code=code)
        self.provider = provider
        self.status = status
        self.code = code
        self.reason = reason
        self.suppress = suppress
        self.suppress_reason = suppress_reason


ProviderError = ProviderRetryableError | ProviderPermanentError

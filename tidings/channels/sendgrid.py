"""SendGrid v3 Mail Send through the official SDK (``sendgrid.SendGridAPIClient``).

One API call per message (each body is personalised), sent concurrently on a bounded thread
pool (``TIDINGS_SENDGRID_CONCURRENCY``). Our message id travels in ``custom_args`` so every
event webhook names it; categories and headers (List-Unsubscribe) go as SendGrid documents.
The host is a setting (``TIDINGS_SENDGRID_HOST``; EU residency: ``https://api.eu.sendgrid.com``);
tests point it at the local simulator, since the SDK talks through urllib and HTTP mocking
libraries do not see it. A 202 carries ``X-Message-Id``, kept as the provider message id.
By default the SDK's requests go over keep-alive connections (``channels.keepalive``; the
SDK alone opens a connection and builds a urllib opener per message);
``TIDINGS_SENDGRID_KEEPALIVE=false`` restores the SDK's own transport.

The Signed Event Webhook lives here too: ``SendGridVerifier`` checks SendGrid's ECDSA P-256
signature over ``timestamp + raw body`` (the SDK's ``EventWebhook``, against
``TIDINGS_SENDGRID_WEBHOOK_PUBLIC_KEY``) and the replay window; ``EVENT_TYPES`` maps SendGrid's
event names to ours and ``parse_event`` reads one event (web/store.py writes it).

>>> channel = SendGridChannel(api_key="SG.x", host="http://127.0.0.1:8025")  # doctest: +SKIP
>>> channel.send_batch(emails)                                                # doctest: +SKIP
>>> parse_event({"event": "spamreport", "sg_event_id": "e1", "email": "a@b.example"}).type
'complaint'
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException, RemoteDisconnected
from typing import Any

from python_http_client import exceptions as http_errors  # type: ignore[import-untyped]

from tidings.channels.base import Channel, RetryPolicy, parse_retry_after
from tidings.channels.keepalive import ConnectionPool, KeepAliveClient
from tidings.channels.ratelimit import RateLimiter, make_rate_limiter
from tidings.channels.types import (
    MESSAGE_ID_ARG,
    OutboundEmail,
    ProviderPermanentError,
    ProviderRetryableError,
    SendResult,
)
from tidings.errors import ConfigurationError

DEFAULT_HOST = "https://api.sendgrid.com"
EU_HOST = "https://api.eu.sendgrid.com"
MAX_CATEGORIES = 10


class SendGridChannel(Channel[OutboundEmail]):
    provider = "sendgrid"

    def __init__(
        self,
        *,
        api_key: str,
        host: str = DEFAULT_HOST,
        concurrency: int = 16,
        timeout: float = 10.0,
        keepalive: bool = True,
        rate_limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(rate_limiter=rate_limiter, retry=retry)
        if not api_key:
            raise ConfigurationError("TIDINGS_SENDGRID_API_KEY is not set")
        self.api_key = api_key
        self.host = host.rstrip("/")
        self.concurrency = concurrency
        self.timeout = timeout
        self.pool = ConnectionPool(self.host, timeout=timeout) if keepalive else None
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SendGridChannel:
        key = settings.sendgrid_api_key
        options: dict[str, Any] = {
            "api_key": key.get_secret_value() if key else "",
            "host": settings.sendgrid_host,
            "concurrency": settings.sendgrid_concurrency,
            "timeout": settings.sendgrid_timeout,
            "keepalive": settings.sendgrid_keepalive,
            "rate_limiter": make_rate_limiter(settings),
            "retry": RetryPolicy.from_settings(settings),
        }
        options.update(overrides)
        return cls(**options)

    def _client(self) -> Any:
        # python_http_client mutates shared header state per call: one client per thread
        client: Any = getattr(self._local, "client", None)
        if client is None:
            # imported here: the web app reads this module's webhook half without the SDK
            from sendgrid import SendGridAPIClient  # type: ignore[import-untyped]

            client = SendGridAPIClient(api_key=self.api_key, host=self.host)
            if self.pool is not None:
                client.client = KeepAliveClient(
                    host=self.host,
                    request_headers=client._default_headers,
                    version=3,
                    timeout=self.timeout,
                    pool=self.pool,
                )
            self._local.client = client
        return client

    def close(self) -> None:
        super().close()
        if self.pool is not None:
            self.pool.close()

    # -- the hooks ------------------------------------------------------------------------
    def build_payload(self, message: OutboundEmail) -> dict[str, Any]:
        if len(message.categories) > MAX_CATEGORIES:
            raise ProviderPermanentError(
                f"{len(message.categories)} categories; SendGrid takes at most {MAX_CATEGORIES}",
                provider=self.provider,
                code="categories",
            )
        sender: dict[str, str] = {"email": message.from_email}
        if message.from_name:
            sender["name"] = message.from_name
        content = []
        if message.text is not None:
            content.append({"type": "text/plain", "value": message.text})
        if message.html is not None:
            content.append({"type": "text/html", "value": message.html})
        custom_args = {**{k: str(v) for k, v in message.metadata.items()}}
        custom_args[MESSAGE_ID_ARG] = message.message_id
        payload: dict[str, Any] = {
            "personalizations": [{"to": [{"email": message.to}]}],
            "from": sender,
            "subject": " ".join(message.subject.splitlines()),
            "content": content,
            "custom_args": custom_args,
        }
        if message.reply_to:
            payload["reply_to"] = {"email": message.reply_to}
        if message.headers:
            payload["headers"] = dict(message.headers)
        if message.categories:
            payload["categories"] = list(message.categories)
        return payload

    def post(self, message: OutboundEmail, payload: dict[str, Any]) -> Any:
        client = self._client()
        return client.client.mail.send.post(request_body=payload, timeout=self.timeout)

    def parse_result(self, message: OutboundEmail, response: Any) -> SendResult:
        provider_id = response.headers.get("X-Message-Id") if response.headers else None
        return SendResult(
            message_id=message.message_id,
            status="accepted",
            provider=self.provider,
            channel="email",
            to=message.to,
            provider_message_id=provider_id,
            raw={"status": response.status_code},
        )

    def lookup(self, messages: Sequence[OutboundEmail]) -> dict[str, str | None]:
        """SendGrid's Email Activity API, filtered on our message id in ``unique_args``.

        The feed lags behind sending by up to minutes: only ask about messages older than that
        (``TIDINGS_RECONCILE_AFTER``). Errors leave a message unknown (in flight). Queries run
        on the adapter's bounded thread pool.
        """

        def ask(message: OutboundEmail) -> tuple[str, str | None] | None:
            query = f"unique_args['{MESSAGE_ID_ARG}']=\"{message.message_id}\""
            try:
                response = self._client().client.messages.get(
                    query_params={"query": query, "limit": 10}
                )
                records = json.loads(response.body or b"{}").get("messages", [])
            except (http_errors.HTTPError, urllib.error.URLError, OSError, ValueError):
                return None
            return message.message_id, (records[0].get("msg_id") if records else None)

        with ThreadPoolExecutor(max(1, min(self.concurrency, len(messages)))) as pool:
            answers = [a for a in pool.map(ask, messages) if a is not None]
        return dict(answers)

    def classify(self, error: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        if isinstance(error, http_errors.HTTPError):
            return self._from_http(error)
        if isinstance(error, urllib.error.URLError):
            reason = error.reason
            if isinstance(reason, TimeoutError | socket.timeout):
                return ProviderRetryableError(
                    f"timed out after {self.timeout}s", provider=self.provider, in_doubt=True
                )
            return ProviderRetryableError(
                f"cannot connect: {reason}", provider=self.provider, unreachable=True
            )
        if isinstance(error, TimeoutError | socket.timeout | RemoteDisconnected):
            return ProviderRetryableError(
                f"{error.__class__.__name__}: {error}", provider=self.provider, in_doubt=True
            )
        if isinstance(error, ConnectionRefusedError | socket.gaierror):
            return ProviderRetryableError(
                f"cannot connect: {error}", provider=self.provider, unreachable=True
            )
        if isinstance(error, HTTPException | OSError):
            return ProviderRetryableError(
                f"{error.__class__.__name__}: {error}", provider=self.provider, in_doubt=True
            )
        return None

    def _from_http(
        self, error: http_errors.HTTPError
    ) -> ProviderRetryableError | ProviderPermanentError:
        status = int(error.status_code)
        reason = _error_text(error.body) or str(error.reason)
        headers = error.headers
        if status == 429:
            retry_after = parse_retry_after(headers.get("Retry-After") if headers else None)
            reset = headers.get("X-RateLimit-Reset") if headers else None
            if retry_after is None and reset:
                retry_after = max(0.0, float(reset) - time.time())
            return ProviderRetryableError(
                reason, provider=self.provider, status=status, retry_after=retry_after
            )
        if status >= 500:
            return ProviderRetryableError(reason, provider=self.provider, status=status)
        if status in (401, 403):
            raise ConfigurationError(
                f"SendGrid refused the API key ({status}: {reason}); check "
                "TIDINGS_SENDGRID_API_KEY and its mail.send scope"
            )
        return ProviderPermanentError(reason, provider=self.provider, status=status)


def _error_text(body: bytes | str | None) -> str:
    """SendGrid's ``{"errors": [{"message", "field"}]}`` as one line."""
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace") if isinstance(body, bytes) else body
    parts = []
    for item in data.get("errors", []) if isinstance(data, dict) else []:
        message = item.get("message", "")
        field = item.get("field")
        parts.append(f"{message} (field {field})" if field else message)
    return "; ".join(parts) or str(data)


# -- the Signed Event Webhook -------------------------------------------------------------
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class SendGridVerifier:
    """The SDK's ``EventWebhook`` with the key parsed once, plus the replay window."""

    def __init__(self, public_key: str, max_age: int) -> None:
        from sendgrid.helpers.eventwebhook import EventWebhook  # type: ignore[import-untyped]

        self.helper = EventWebhook()
        try:
            self.key = self.helper.convert_public_key_to_ecdsa(public_key.strip())
        except ValueError as exc:
            raise ConfigurationError(
                "TIDINGS_SENDGRID_WEBHOOK_PUBLIC_KEY is not a base64 EC public key: copy the "
                f"verification key from SendGrid's Mail Settings ({exc})"
            ) from exc
        self.max_age = max_age

    def check(self, body: bytes, signature: str | None, timestamp: str | None) -> str | None:
        """None when the request is authentic and fresh, else why not."""
        if not signature or not timestamp:
            return f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required"
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.max_age:
            return "timestamp outside the accepted window (a replay?)"
        try:
            payload = body.decode("utf-8")
            base64.b64decode(signature, validate=True)
            valid = self.helper.verify_signature(payload, signature, timestamp, self.key)
        except (ValueError, TypeError):
            return "signature is malformed"
        return None if valid else "signature does not match"


# -- the event vocabulary -----------------------------------------------------------------
EVENT_TYPES: dict[str, str] = {
    "processed": "processed",
    "deferred": "deferred",
    "delivered": "delivered",
    "open": "open",
    "click": "click",
    "bounce": "bounce",
    "dropped": "dropped",
    "spamreport": "complaint",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
    "group_resubscribe": "resubscribe",
}
"""SendGrid's event names -> ours; anything else is stored as ``unknown`` with its payload."""

SUPPRESSING_TYPES = frozenset({"bounce", "dropped", "complaint", "unsubscribe"})
"""Our types that suppress the address and revoke its marketing email consent."""


@dataclass(frozen=True, slots=True)
class SendGridEvent:
    """One event of a webhook batch, read: our ``type``, the raw message reference, the payload."""

    payload: dict[str, Any]
    type: str
    message_ref: Any

    @property
    def event_id(self) -> str:
        return str(self.payload["sg_event_id"])[:255]

    @property
    def hard(self) -> bool:
        """False for a ``blocked`` bounce: temporary, so no suppression and not ``bounced``."""
        return not (self.type == "bounce" and self.payload.get("type") == "blocked")

    @property
    def url(self) -> str | None:
        url = self.payload.get("url") if self.type == "click" else None
        return url if isinstance(url, str) else None

    @property
    def reason(self) -> Any:
        """SendGrid's reason for a bounce or a drop (None for other types)."""
        return self.payload.get("reason") if self.type in {"bounce", "dropped"} else None

    @property
    def suppress_address(self) -> str | None:
        """The lower-cased address this event suppresses, if it suppresses one."""
        address = self.payload.get("email")
        if self.type in SUPPRESSING_TYPES and self.hard and isinstance(address, str):
            return address.strip().lower() or None
        return None

    @property
    def source(self) -> str:
        """Where a consent change or suppression came from: ``sendgrid:<their event name>``."""
        return f"sendgrid:{self.payload.get('event')}"


def parse_event(event: Any) -> SendGridEvent | None:
    """One SendGrid event; None when it is not one (not an object, no ``sg_event_id``)."""
    if not isinstance(event, dict) or not isinstance(event.get("sg_event_id"), str):
        return None
    ref = event.get(MESSAGE_ID_ARG)
    custom = event.get("custom_args")
    if ref is None and isinstance(custom, dict):
        ref = custom.get(MESSAGE_ID_ARG)
    return SendGridEvent(event, EVENT_TYPES.get(str(event.get("event")), "unknown"), ref)

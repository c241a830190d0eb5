"""Twilio Programmable Messaging through the official SDK (``twilio.rest.Client``).

``messages.create(to, body, from_ | messaging_service_sid, status_callback)``; our message id
rides in the status callback URL (``?tidings_message_id=...``) so delivery webhooks name it.
The API base URL is a setting (``TIDINGS_TWILIO_API_BASE``): the SDK keeps it as a plain
attribute per domain, ``client.api.base_url``. The SDK gets an injected HTTP client that
remembers each thread's last response, so a 429's Retry-After can be honoured.

Errors: 21610 (recipient replied STOP) permanent and a suppression; 21211, 21614 and other
4xx permanent; 429 / 20429 and 5xx retryable.

>>> channel = TwilioChannel(account_sid="AC...", auth_token="...",          # doctest: +SKIP
...     api_base="http://127.0.0.1:8026", from_number="+15005550006")
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped]
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.http.response import Response  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from tidings.channels.base import Channel, RetryPolicy, parse_retry_after
from tidings.channels.ratelimit import RateLimiter, make_rate_limiter
from tidings.channels.types import (
    MESSAGE_ID_ARG,
    OutboundSms,
    ProviderPermanentError,
    ProviderRetryableError,
    SendResult,
)
from tidings.errors import ConfigurationError

DEFAULT_API_BASE = "https://api.twilio.com"
UNSUBSCRIBED = 21610
INVALID_TO = {21211, 21614, 21612, 21408}
RATE_LIMITED = {429, 20429}


class _RememberingHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """The SDK's client, remembering the last response per thread (for Retry-After)."""

    def __init__(self, *, timeout: float, pool_size: int) -> None:
        super().__init__(timeout=timeout)
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size)
        if self.session is not None:
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self._local = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Response:
        response = super().request(*args, **kwargs)
        self._local.response = response
        return response

    @property
    def thread_last_response(self) -> Response | None:
        return getattr(self._local, "response", None)


class TwilioChannel(Channel[OutboundSms]):
    provider = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_base: str = DEFAULT_API_BASE,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        concurrency: int = 8,
        timeout: float = 10.0,
        rate_limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(rate_limiter=rate_limiter, retry=retry)
        if not account_sid:
            raise ConfigurationError("TIDINGS_TWILIO_ACCOUNT_SID is not set")
        if not auth_token:
            raise ConfigurationError("TIDINGS_TWILIO_AUTH_TOKEN is not set")
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback
        self.concurrency = concurrency
        self.http = _RememberingHttpClient(timeout=timeout, pool_size=max(10, concurrency))
        self.client = Client(account_sid, auth_token, http_client=self.http)
        self.client.api.base_url = api_base.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> TwilioChannel:
        token = settings.twilio_auth_token
        options: dict[str, Any] = {
            "account_sid": settings.twilio_account_sid or "",
            "auth_token": token.get_secret_value() if token else "",
            "api_base": settings.twilio_api_base,
            "from_number": settings.twilio_from_number,
            "messaging_service_sid": settings.twilio_messaging_service_sid,
            "status_callback": settings.twilio_status_callback,
            "concurrency": settings.twilio_concurrency,
            "rate_limiter": make_rate_limiter(settings),
            "retry": RetryPolicy.from_settings(settings),
        }
        options.update(overrides)
        return cls(**options)

    def rate_key(self, message: OutboundSms) -> str:
        sender = message.from_number or message.messaging_service_sid
        return f"{self.provider}:{sender or self.from_number or self.messaging_service_sid}"

    # -- the hooks ------------------------------------------------------------------------
    def build_payload(self, message: OutboundSms) -> dict[str, Any]:
        payload: dict[str, Any] = {"to": message.to, "body": message.body}
        from_number = message.from_number or (
            None if message.messaging_service_sid else self.from_number
        )
        service = message.messaging_service_sid or (
            None if message.from_number else self.messaging_service_sid
        )
        if from_number:
            payload["from_"] = from_number
        if service:
            payload["messaging_service_sid"] = service
        if not from_number and not service:
            raise ConfigurationError(
                "an SMS needs a sender: set TIDINGS_TWILIO_FROM_NUMBER or "
                "TIDINGS_TWILIO_MESSAGING_SERVICE_SID (or give one on the message)"
            )
        if self.status_callback:
            payload["status_callback"] = _with_query(
                self.status_callback, {MESSAGE_ID_ARG: message.message_id}
            )
        return payload

    def post(self, message: OutboundSms, payload: dict[str, Any]) -> Any:
        return self.client.messages.create(**payload)

    def parse_result(self, message: OutboundSms, response: Any) -> SendResult:
        return SendResult(
            message_id=message.message_id,
            status="accepted",
            provider=self.provider,
            channel="sms",
            to=message.to,
            provider_message_id=response.sid,
            raw={"status": response.status, "num_segments": response.num_segments},
        )

    def lookup(self, messages: Sequence[OutboundSms]) -> dict[str, str | None]:
        """Twilio's message list for the recipient (today and yesterday), matched on the body.

        Twilio keeps no field of ours on a message, so the same body to the same number in
        that window counts as ours: at worst a second identical SMS is not sent.
        """
        found: dict[str, str | None] = {}
        since = datetime.now(UTC) - timedelta(days=1)
        for message in messages:
            try:
                sent = self.client.messages.list(to=message.to, date_sent_after=since, limit=200)
            except (TwilioRestException, OSError, requests.RequestException):
                continue
            match = next((m for m in sent if (m.body or "") == message.body), None)
            found[message.message_id] = match.sid if match is not None else None
        return found

    def classify(self, error: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        if isinstance(error, TwilioRestException):
            return self._from_rest(error)
        if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            in_doubt = not isinstance(error, requests.exceptions.ConnectTimeout) and not (
                isinstance(error, requests.exceptions.ConnectionError)
                and "refused" in str(error).lower()
            )
            return ProviderRetryableError(
                f"{error.__class__.__name__}: {error}", provider=self.provider, in_doubt=in_doubt
            )
        return None

    def _from_rest(
        self, error: TwilioRestException
    ) -> ProviderRetryableError | ProviderPermanentError:
        code = int(error.code) if error.code is not None else error.status
        reason = error.msg
        if error.status in RATE_LIMITED or code in RATE_LIMITED:
            last = self.http.thread_last_response
            headers = last.headers if last is not None and last.headers is not None else {}
            return ProviderRetryableError(
                reason,
                provider=self.provider,
                status=error.status,
                code=str(code),
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        if error.status >= 500:
            return ProviderRetryableError(
                reason, provider=self.provider, status=error.status, code=str(code)
            )
        if error.status in (401, 403) and code in (20003, 401, 403):
            raise ConfigurationError(
                f"Twilio refused the credentials ({error.status}: {reason}); check "
                "TIDINGS_TWILIO_ACCOUNT_SID and TIDINGS_TWILIO_AUTH_TOKEN"
            )
        if code == UNSUBSCRIBED:
            return ProviderPermanentError(
                reason,
                provider=self.provider,
                status=error.status,
                code=str(code),
                suppress=True,
                suppress_reason="unsubscribed",
            )
        return ProviderPermanentError(
            reason, provider=self.provider, status=error.status, code=str(code)
        )


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query.extend(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

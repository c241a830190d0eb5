"""Twilio Programmable Messaging through the official SDK (``twilio.rest.Client``).

``messages.create(to, body, from_ | messaging_service_sid, status_callback)``; our message id
rides in the status callback URL (``?tidings_message_id=...``) so delivery webhooks name it.
The API base URL is a setting (``TIDINGS_TWILIO_API_BASE``): the SDK keeps it as a plain
attribute per domain, ``client.api.base_url``. The SDK gets an injected HTTP client that
remembers each thread's last response, so a 429's Retry-After can be honoured.

Errors: 21610 (recipient replied STOP) permanent and a suppression; 21211, 21614 and other
4xx permanent; 429 / 20429 and 5xx retryable.

The webhooks live here too: ``verify_signature`` checks ``X-Twilio-Signature`` (HMAC-SHA1 of the
public URL plus the sorted form fields under the auth token, the SDK's ``RequestValidator``);
``parse_status`` reads a status callback through ``STATUS_TYPES`` and ``parse_inbound`` an
inbound SMS, whose STOP / START / HELP keywords ``inbound_keyword`` recognises. The SDK is
imported where it is used, so the web app reads this vocabulary without loading it.

>>> channel = TwilioChannel(account_sid="AC...", auth_token="...",          # doctest: +SKIP
...     api_base="http://127.0.0.1:8026", from_number="+15005550006")
>>> parse_status({"MessageSid": "SM1", "MessageStatus": "undelivered"}).type
'undelivered'
>>> inbound_keyword(" stop! ")
'stop'
"""

from __future__ import annotations

import functools
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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


@functools.cache
def _remembering_http_client() -> Any:
    """The SDK's HTTP client class, remembering the last response per thread (for
    Retry-After); built on first use so importing this module does not load the SDK."""
    import requests
    from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]

    class RememberingHttpClient(TwilioHttpClient):  # type: ignore[misc]
        def __init__(self, *, timeout: float, pool_size: int) -> None:
            super().__init__(timeout=timeout)
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size)
            if self.session is not None:
                self.session.mount("http://", adapter)
                self.session.mount("https://", adapter)
            self._local = threading.local()

        def request(self, *args: Any, **kwargs: Any) -> Any:
            response = super().request(*args, **kwargs)
            self._local.response = response
            return response

        @property
        def thread_last_response(self) -> Any:
            return getattr(self._local, "response", None)

    return RememberingHttpClient


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
        from twilio.rest import Client  # type: ignore[import-untyped]

        http_client = _remembering_http_client()
        self.http = http_client(timeout=timeout, pool_size=max(10, concurrency))
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
        import requests
        from twilio.base.exceptions import TwilioException  # type: ignore[import-untyped]

        found: dict[str, str | None] = {}
        since = datetime.now(UTC) - timedelta(days=1)
        for message in messages:
            try:
                sent = self.client.messages.list(to=message.to, date_sent_after=since, limit=200)
            # TwilioException: the page fetch raises the base class ("Unable to fetch page") for
            # a 404/429/5xx page, TwilioRestException for others; ValueError: a body not JSON.
            except (TwilioException, OSError, requests.RequestException, ValueError):
                continue  # this one cannot be told: left in flight, asked again next time
            match = next((m for m in sent if (m.body or "") == message.body), None)
            found[message.message_id] = match.sid if match is not None else None
        return found

    def classify(self, error: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        import requests
        from twilio.base.exceptions import TwilioException, TwilioRestException

        if isinstance(error, TwilioRestException):
            return self._from_rest(error)
        if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            in_doubt = not isinstance(error, requests.exceptions.ConnectTimeout) and not (
                isinstance(error, requests.exceptions.ConnectionError)
                and "refused" in str(error).lower()
            )
            return ProviderRetryableError(
                f"{error.__class__.__name__}: {error}",
                provider=self.provider,
                in_doubt=in_doubt,
                unreachable=not in_doubt,
            )
        # The rest the SDK can raise once the request may have reached Twilio (twilio.base
        # version/page, twilio.http): a broken or unreadable answer (ChunkedEncodingError,
        # ContentDecodingError), a body that is not JSON (ValueError), a TwilioException that
        # is not a REST error. Twilio may have the message: retry only after reconcile asks.
        if isinstance(error, requests.RequestException | TwilioException | ValueError):
            return ProviderRetryableError(
                f"{error.__class__.__name__}: {error}", provider=self.provider, in_doubt=True
            )
        return None

    def _from_rest(self, error: Any) -> ProviderRetryableError | ProviderPermanentError:
        """A ``TwilioRestException`` as one of our errors."""
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


# -- the webhooks: signature, status callbacks, inbound SMS -------------------------------
SIGNATURE_HEADER = "X-Twilio-Signature"


def parse_form(body: bytes) -> dict[str, str]:
    """The form fields of a webhook body, exactly as sent (UnicodeDecodeError if not UTF-8)."""
    text = body.decode("utf-8")
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=False))


def verify_signature(*, auth_token: str, url: str, form: Mapping[str, str], signature: str) -> bool:
    """``X-Twilio-Signature`` against the public ``url`` (with its query) and the form."""
    from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

    validator = RequestValidator(auth_token)
    return bool(signature) and bool(validator.validate(url, form, signature))


STATUS_TYPES: dict[str, str] = {
    "accepted": "queued",
    "queued": "queued",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "read": "read",
}
"""Twilio's ``MessageStatus`` values -> ours; anything else is stored as ``unknown``."""

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})


@dataclass(frozen=True, slots=True)
class StatusCallback:
    """A status callback, read: the SID, Twilio's status and ours, the error code if any."""

    sid: str
    status: str
    type: str
    error_code: str | None
    to: str | None

    @property
    def event_id(self) -> str:
        return f"{self.sid}:{self.status}"[:255]

    @property
    def unsubscribed(self) -> bool:
        """Twilio 21610: the recipient replied STOP; their number is suppressed."""
        return self.error_code == str(UNSUBSCRIBED)


def parse_status(form: Mapping[str, str]) -> StatusCallback | None:
    """A status callback's form; None without a message SID or a status."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if not sid or not status:
        return None
    return StatusCallback(
        sid=sid,
        status=status,
        type=STATUS_TYPES.get(status, "unknown"),
        error_code=form.get("ErrorCode") or None,
        to=form.get("To") or None,
    )


def inbound_keyword(body: str) -> str | None:
    """``stop``, ``start`` or ``help`` for an inbound SMS body, else ``None``."""
    word = body.strip().strip(".!").upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An inbound SMS, read: who sent it, its SID and body, and our type for it."""

    sid: str
    phone: str
    body: str
    keyword: str | None

    @property
    def event_id(self) -> str:
        return f"{self.sid}:inbound"[:255]

    @property
    def type(self) -> str:
        """``stop``, ``start``, ``help`` or ``inbound``."""
        return self.keyword or "inbound"

    @property
    def source(self) -> str:
        """Where the consent change came from: ``twilio:<the word they sent>``."""
        return f"twilio:{self.body.strip().upper()[:20]}"


def parse_inbound(form: Mapping[str, str]) -> InboundSms | None:
    """An inbound SMS's form; None without a message SID or a sender."""
    phone = (form.get("From") or "").strip()
    body = form.get("Body") or ""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if not sid or not phone:
        return None
    return InboundSms(sid=sid, phone=phone, body=body, keyword=inbound_keyword(body))

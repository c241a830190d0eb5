"""SMTP with the standard library: a pool of connections, each for many messages.

Security ``none``, ``starttls`` (upgrade after EHLO) or ``ssl`` (implicit TLS, port 465); AUTH
when a username is set. ``connections`` (``TIDINGS_SMTP_CONNECTIONS``, default 1) sending
threads each hold their own connection, which opens on its first message and stays open across
batches until ``close()``. If the server dropped it (idle timeout, restart) the adapter
reconnects once and sends that message again; a second drop is a retryable error.
Replies: 4xx retryable, 5xx permanent; 550 5.1.x at RCPT (no such user) also asks for a
suppression (a hard bounce).

Acceptance is per message (the server's 250 after DATA) and an SMTP server keeps no record we
could ask for after a crash, so the adapter sets ``record_each``: the dispatcher records each
result the moment it exists, and a crash leaves at most the one message whose 250 was not yet
recorded in doubt (at most ``connections`` with a pool: the dispatcher hands over and records
that many at a time).

>>> channel = SmtpChannel(host="127.0.0.1", port=2525, security="none")  # doctest: +SKIP
>>> with channel:                                                           # doctest: +SKIP
...     results = channel.send_batch(emails)
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
from typing import Any, Literal

from tidings.channels.base import Channel, RetryPolicy
from tidings.channels.mime import message_id_header, mime_bytes
from tidings.channels.ratelimit import RateLimiter, make_rate_limiter
from tidings.channels.types import (
    OutboundEmail,
    ProviderPermanentError,
    ProviderRetryableError,
    SendResult,
)
from tidings.errors import ConfigurationError

Security = Literal["none", "starttls", "ssl"]


class SmtpChannel(Channel[OutboundEmail]):
    provider = "smtp"
    concurrency = 1  # connections (and sending threads); messages in order with one
    record_each = True

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: Security = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        connections: int = 1,
        rate_limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(rate_limiter=rate_limiter, retry=retry)
        if security not in ("none", "starttls", "ssl"):
            raise ConfigurationError(
                f"TIDINGS_SMTP_SECURITY={security!r}: use none, starttls or ssl"
            )
        self.host, self.port, self.security = host, port, security
        self.username, self.password = username, password
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.local_hostname = local_hostname
        if connections < 1:
            raise ConfigurationError(f"TIDINGS_SMTP_CONNECTIONS={connections}: use 1 or more")
        self.concurrency = connections
        self._local = threading.local()  # each sending thread's connection
        self._open: list[smtplib.SMTP] = []
        self._lock = threading.Lock()
        self.connections_opened = 0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SmtpChannel:
        context = None
        if settings.smtp_ca_file:
            context = ssl.create_default_context(cafile=settings.smtp_ca_file)
        options: dict[str, Any] = {
            "host": settings.smtp_host,
            "port": settings.smtp_port,
            "security": settings.smtp_security,
            "username": settings.smtp_username,
            "password": (
                settings.smtp_password.get_secret_value() if settings.smtp_password else None
            ),
            "timeout": settings.smtp_timeout,
            "connections": settings.smtp_connections,
            "ssl_context": context,
            "rate_limiter": make_rate_limiter(settings),
            "retry": RetryPolicy.from_settings(settings),
        }
        options.update(overrides)
        return cls(**options)

    # -- connection -----------------------------------------------------------------------
    def open(self) -> None:
        """Nothing yet: the connection opens with the first message, inside the retry loop."""

    def close(self) -> None:
        super().close()
        with self._lock:
            conns, self._open = self._open, []
        self._local = threading.local()
        for conn in conns:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()

    def _connect(self) -> smtplib.SMTP:
        try:
            conn: smtplib.SMTP
            if self.security == "ssl":
                conn = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=self.ssl_context,
                )
            else:
                conn = smtplib.SMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=self.ssl_context)
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as error:
            raise ConfigurationError(
                f"SMTP AUTH refused for TIDINGS_SMTP_USERNAME={self.username!r} at "
                f"{self.host}:{self.port} ({error.smtp_code} {error.smtp_error!r}); "
                "check TIDINGS_SMTP_USERNAME / TIDINGS_SMTP_PASSWORD"
            ) from error
        except ssl.SSLCertVerificationError as error:
            raise ConfigurationError(
                f"the certificate of SMTP server {self.host}:{self.port} is not trusted "
                f"({error.verify_message}); set TIDINGS_SMTP_CA_FILE to its CA bundle"
            ) from error
        except smtplib.SMTPNotSupportedError as error:
            raise ConfigurationError(
                f"SMTP server {self.host}:{self.port} does not offer {error}; "
                "check TIDINGS_SMTP_SECURITY (none|starttls|ssl) and TIDINGS_SMTP_USERNAME"
            ) from error
        with self._lock:
            self.connections_opened += 1
            self._open.append(conn)
        return conn

    # -- the hooks ------------------------------------------------------------------------
    def build_payload(self, message: OutboundEmail) -> bytes:
        # CRLF line ends on the wire: smtplib sends bytes as given, and a bare LF is refused
        # by servers that guard against SMTP smuggling
        return mime_bytes(message, provider=self.provider)

    def post(self, message: OutboundEmail, payload: bytes) -> dict[str, tuple[int, bytes]]:
        try:
            return self._send(message, payload)
        except smtplib.SMTPServerDisconnected:
            self._drop()
            try:  # the server closed an idle or used-up connection: once more, fresh
                return self._send(message, payload)
            except smtplib.SMTPServerDisconnected:
                self._drop()
                raise

    def _send(self, message: OutboundEmail, payload: bytes) -> dict[str, tuple[int, bytes]]:
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._reach()
        return conn.sendmail(message.from_email, [message.to], payload)

    def _reach(self) -> smtplib.SMTP:
        """A new connection; a relay that cannot be reached is said plainly (``unreachable``:
        nothing was sent, and enough of these in a row open the circuit)."""
        relay = f"relay {self.host}:{self.port}"
        try:
            return self._connect()
        except smtplib.SMTPResponseException:
            raise  # the relay answered (421 at the greeting...): classified by its code
        except ConnectionRefusedError as error:
            reason = f"{relay} refused the connection"
            cause: Exception = error
        except TimeoutError as error:
            reason = f"{relay} did not answer within {self.timeout:g}s"
            cause = error
        except smtplib.SMTPServerDisconnected as error:
            reason = f"{relay} closed the connection before greeting ({error})"
            cause = error
        except OSError as error:  # no such host, no route, TLS handshake...
            reason = f"cannot reach {relay}: {error.__class__.__name__}: {error}"
            cause = error
        raise ProviderRetryableError(reason, provider=self.provider, unreachable=True) from cause

    def _drop(self) -> None:
        """Close this thread's connection (the next message opens a new one)."""
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)
            conn.close()

    def parse_result(
        self, message: OutboundEmail, response: dict[str, tuple[int, bytes]]
    ) -> SendResult:
        # one recipient per message: sendmail raises when it is refused, so this is acceptance
        return SendResult(
            message_id=message.message_id,
            status="accepted",
            provider=self.provider,
            channel="email",
            to=message.to,
            provider_message_id=message_id_header(message),
            raw={
                "refused": {k: [v[0], v[1].decode(errors="replace")] for k, v in response.items()}
            },
        )

    def classify(self, error: Exception) -> ProviderRetryableError | ProviderPermanentError | None:
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            code, reply = next(iter(error.recipients.values()))
            return self._by_code(code, reply, at="RCPT")
        if isinstance(error, smtplib.SMTPSenderRefused):
            return self._by_code(error.smtp_code, error.smtp_error, at="MAIL FROM")
        if isinstance(error, smtplib.SMTPResponseException):
            return self._by_code(error.smtp_code, error.smtp_error, at="DATA")
        if isinstance(error, smtplib.SMTPServerDisconnected):
            return ProviderRetryableError(
                f"connection dropped twice: {error}", provider=self.provider
            )
        if isinstance(error, TimeoutError | socket.timeout):
            return ProviderRetryableError(
                f"timed out after {self.timeout}s", provider=self.provider, in_doubt=True
            )
        if isinstance(error, OSError | smtplib.SMTPException):
            self._drop()
            return ProviderRetryableError(
                f"{error.__class__.__name__}: {error}", provider=self.provider
            )
        return None

    def _by_code(
        self, code: int, reply: bytes | str, *, at: str
    ) -> ProviderRetryableError | ProviderPermanentError:
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        reason = f"{at} refused: {code} {text}"
        if 400 <= code < 500:
            return ProviderRetryableError(reason, provider=self.provider, status=code)
        hard_bounce = at == "RCPT" and code in (550, 551, 553) and text.startswith("5.1.")
        return ProviderPermanentError(
            reason,
            provider=self.provider,
            status=code,
            suppress=hard_bounce,
            suppress_reason="hard_bounce" if hard_bounce else None,
        )

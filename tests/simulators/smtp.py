"""An SMTP server on loopback (aiosmtpd), recording envelopes and parsed messages.

Optional AUTH (``users={"user": "pass"}``), STARTTLS (``tls_context=``) or implicit TLS
(``ssl_context=``). Programmable: ``rejected`` addresses get ``550 5.1.1`` at RCPT,
``tempfail_once`` addresses get ``451`` the first time, ``drop_after=N`` closes the connection
right after the N-th accepted message. ``connections`` counts client sessions (EHLO/HELO seen).

>>> with SmtpSimulator() as sim:                                  # doctest: +SKIP
...     smtplib.SMTP("127.0.0.1", sim.port).sendmail("a@x.test", ["b@y.test"], b"Subject: x")
...     sim.messages[0].rcpt_tos
['b@y.test']
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from functools import cached_property
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    tls: bool
    connection: int

    @cached_property
    def message(self) -> EmailMessage:
        """The parsed message (parsed on first use: the server stays fast under load)."""
        parsed = message_from_bytes(self.data, policy=email_policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler:
    def __init__(self, sim: SmtpSimulator) -> None:
        self.sim = sim

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        self.sim._count_connection(server)
        session.host_name = hostname
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self.sim._count_connection(server)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        sim = self.sim
        with sim.lock:
            if address in sim.rejected:
                return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            if address in sim.tempfail_once:
                sim.tempfail_once.discard(address)
                return "451 4.3.0 Temporary failure, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sim = self.sim
        data = envelope.original_content or b""
        login = session.auth_data if isinstance(session.auth_data, str) else None
        with sim.lock:
            sim.messages.append(
                Received(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=data,
                    login=login,
                    tls=server.transport is not None
                    and server.transport.get_extra_info("ssl_object") is not None,
                    connection=getattr(server, "_sim_connection", 0),
                )
            )
            drop = sim.drop_after is not None and len(sim.messages) == sim.drop_after
            if drop:
                sim.drop_after = None
        if drop and server.transport is not None:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 2.0.0 OK queued"


class SmtpSimulator:
    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        ssl_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
    ) -> None:
        self.users = users
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.rejected: set[str] = set()
        self.tempfail_once: set[str] = set()
        self.drop_after: int | None = None
        self.connections = 0
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if users is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=tls_context is not None,
            )
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        self.controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=ssl_context,
            server_hostname="sim.smtp.test",
            **kwargs,
        )

    def _count_connection(self, server: SMTP) -> None:
        if getattr(server, "_sim_connection", None) is None:
            with self.lock:
                self.connections += 1
                server._sim_connection = self.connections  # type: ignore[attr-defined]

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword) or self.users is None:
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        ok = self.users.get(user) == password
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    def start(self) -> Self:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

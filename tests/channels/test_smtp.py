"""SMTP adapter (stdlib smtplib) against the aiosmtpd simulator on loopback."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from tests.channels.helpers import FAST, email, message_rows, outbox_rows
from tests.simulators.smtp import SmtpSimulator
from tests.simulators.tls import make_self_signed
from tidings.channels.mime import message_id_header
from tidings.channels.record import record_results
from tidings.channels.smtp import SmtpChannel
from tidings.crm.db import session_scope
from tidings.crm.models import Suppression
from tidings.errors import ConfigurationError


def channel(sim: SmtpSimulator, **kwargs: object) -> SmtpChannel:
    options: dict[str, object] = {
        "host": "127.0.0.1",
        "port": sim.port,
        "security": "none",
        "timeout": 5.0,
        "retry": FAST,
    }
    options.update(kwargs)
    return SmtpChannel(**options)  # type: ignore[arg-type]


def test_one_connection_for_many_messages_and_the_mime(smtp_sim: SmtpSimulator) -> None:
    messages = [email(n) for n in range(1, 21)]
    with channel(smtp_sim) as adapter:
        results = adapter.send_batch(messages[:10])
        results += adapter.send_batch(messages[10:])  # the connection outlives a batch

    assert [r.status for r in results] == ["accepted"] * 20
    assert smtp_sim.connections == 1 and len(smtp_sim.messages) == 20
    received = smtp_sim.messages[0]
    assert received.mail_from == "news@shop.example"
    assert received.rcpt_tos == ["user1@example.com"]
    assert b"\n" not in received.data.replace(b"\r\n", b"")  # CRLF only, no bare LF
    mime = received.message
    assert mime["From"] == "Shop News <news@shop.example>"
    assert mime["X-Tidings-Message-Id"] == "1"
    assert mime["Message-ID"] == message_id_header(messages[0]) == results[0].provider_message_id
    assert mime["List-Unsubscribe"] == "<https://t.shop.example/u/1>"
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mime["Reply-To"] == "help@shop.example"
    assert mime.get_content_type() == "multipart/alternative"
    parts = [(p.get_content_type(), p.get_content().strip()) for p in mime.iter_parts()]
    assert parts == [("text/plain", "Hello 1"), ("text/html", "<p>Hello <b>1</b></p>")]


def test_a_pool_of_connections_sends_in_parallel(smtp_sim: SmtpSimulator) -> None:
    messages = [email(n) for n in range(1, 41)]
    with channel(smtp_sim, connections=4) as adapter:
        assert adapter.concurrency == 4
        results = adapter.send_batch(messages[:20])
        results += adapter.send_batch(messages[20:])  # the connections outlive a batch
        assert adapter.connections_opened == smtp_sim.connections
    assert [r.message_id for r in results] == [m.message_id for m in messages]
    assert [r.status for r in results] == ["accepted"] * 40
    assert 2 <= smtp_sim.connections <= 4  # one per sending thread that got work
    assert sorted(m.message["X-Tidings-Message-Id"] for m in smtp_sim.messages) == sorted(
        str(n) for n in range(1, 41)
    )
    with pytest.raises(ConfigurationError, match="TIDINGS_SMTP_CONNECTIONS"):
        channel(smtp_sim, connections=0)


def test_reconnects_once_after_a_dropped_connection(smtp_sim: SmtpSimulator) -> None:
    smtp_sim.drop_after = 3
    with channel(smtp_sim) as adapter:
        results = adapter.send_batch([email(n) for n in range(1, 7)])

    assert [r.status for r in results] == ["accepted"] * 6
    assert smtp_sim.connections == 2
    delivered = [m.message["X-Tidings-Message-Id"] for m in smtp_sim.messages]
    assert delivered == ["1", "2", "3", "4", "5", "6"]  # nothing lost, nothing twice
    assert [m.connection for m in smtp_sim.messages] == [1, 1, 1, 2, 2, 2]


def test_550_fails_suppresses_and_the_connection_goes_on(
    smtp_sim: SmtpSimulator, store: Engine
) -> None:
    ids = outbox_rows(store, ["a@example.com", "gone@example.com", "c@example.com"])
    smtp_sim.rejected.add("gone@example.com")
    messages = [
        email(1, message_id=ids[0], to="a@example.com"),
        email(2, message_id=ids[1], to="gone@example.com"),
        email(3, message_id=ids[2], to="c@example.com"),
    ]
    with channel(smtp_sim) as adapter:
        results = adapter.send_batch(messages)
    with session_scope(store) as session:
        record_results(session=session, results=results)

    assert [r.status for r in results] == ["accepted", "failed", "accepted"]
    assert results[1].suppress and results[1].suppress_reason == "hard_bounce"
    assert smtp_sim.connections == 1
    error = message_rows(store)[ids[1]].error or ""
    assert error.startswith("smtp 550: RCPT refused: 550 5.1.1 <gone@example.com>")
    with session_scope(store) as session:
        [row] = session.scalars(select(Suppression)).all()
        assert (row.channel, row.address, row.reason) == (
            "email",
            "gone@example.com",
            "hard_bounce",
        )


def test_451_is_retried(smtp_sim: SmtpSimulator) -> None:
    smtp_sim.tempfail_once.add("user1@example.com")
    with channel(smtp_sim) as adapter:
        [result] = adapter.send_batch([email(1)])

    assert result.status == "accepted" and result.attempts == 2
    assert len(smtp_sim.messages) == 1


def test_starttls_and_auth(tmp_path: Path) -> None:
    cert = make_self_signed(tmp_path)
    sim = SmtpSimulator(
        users={"mailer": "s3cret"}, tls_context=cert.server_context(), require_starttls=True
    )
    with sim:
        adapter = channel(
            sim,
            security="starttls",
            username="mailer",
            password="s3cret",
            ssl_context=cert.client_context(),
        )
        with adapter:
            [result] = adapter.send_batch([email(1)])
        wrong = channel(sim, security="starttls", username="mailer", password="nope")
        wrong.ssl_context = cert.client_context()
        with pytest.raises(ConfigurationError, match="TIDINGS_SMTP_PASSWORD"):
            wrong.send_batch([email(2)])

    assert result.status == "accepted"
    [received] = sim.messages
    assert received.tls and received.login == "mailer"


def test_implicit_tls(tmp_path: Path) -> None:
    cert = make_self_signed(tmp_path)
    with SmtpSimulator(ssl_context=cert.server_context()) as sim:
        with channel(sim, security="ssl", ssl_context=cert.client_context()) as adapter:
            [result] = adapter.send_batch([email(1)])
        assert result.status == "accepted" and sim.messages[0].tls


def test_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    cert = make_self_signed(tmp_path)
    with SmtpSimulator(tls_context=cert.server_context()) as sim:
        adapter = channel(sim, security="starttls")  # system CAs do not know this cert
        with pytest.raises(ConfigurationError, match="TIDINGS_SMTP_CA_FILE"):
            adapter.send_batch([email(1)])

    assert sim.messages == []


def test_non_ascii_and_long_lines_survive_the_wire(smtp_sim: SmtpSimulator) -> None:
    subject = "Grüße aus Köln: a subject long enough that it has to be folded over lines"
    html = "<p>Straße ☃</p>\n.a line starting with a dot\n" + "x" * 300
    message = email(1, subject=subject, from_name="Shöp, Inc.", html=html, text="Hallo Jürgen")
    with channel(smtp_sim) as adapter:
        [result] = adapter.send_batch([message])

    assert result.status == "accepted"
    [received] = smtp_sim.messages
    assert max(len(line) for line in received.data.split(b"\r\n")) <= 78
    mime = received.message
    assert mime["Subject"] == subject and mime["From"] == '"Shöp, Inc." <news@shop.example>'
    text, markup = (p.get_content() for p in mime.iter_parts())
    assert text == "Hallo Jürgen"
    assert markup.replace("\r\n", "\n") == html


def refusing_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_relay_that_is_down_fails_fast_with_its_cause() -> None:
    """64 messages to a relay that refuses: one round of the configured retries, then the rest
    of the batch comes back as retry at once, each with the cause (not 64 rounds of backoff)."""
    port = refusing_port()
    adapter = SmtpChannel(host="127.0.0.1", port=port, security="none", timeout=5.0, retry=FAST)
    tries: list[int] = []
    connect = adapter._connect

    def counted() -> smtplib.SMTP:
        tries.append(1)
        return connect()

    adapter._connect = counted  # type: ignore[method-assign]
    with adapter:  # the dispatcher hands SMTP one message at a time (record_each)
        results = [r for n in range(1, 65) for r in adapter.send_batch([email(n)])]
    assert [r.status for r in results] == ["retry"] * 64
    assert len(tries) == FAST.max_attempts
    assert {r.error for r in results} == {f"smtp: relay 127.0.0.1:{port} refused the connection"}
    assert [r.attempts for r in results[:2]] == [FAST.max_attempts, 0]
    assert not any(r.in_doubt for r in results)


def test_the_circuit_closes_when_the_relay_answers_again(smtp_sim: SmtpSimulator) -> None:
    from dataclasses import replace

    adapter = channel(smtp_sim, port=refusing_port(), retry=replace(FAST, circuit_cooldown=0.0))
    with adapter:
        assert adapter.send_batch([email(1)])[0].status == "retry"
        adapter.port = smtp_sim.port  # the relay is back
        assert [r.status for r in adapter.send_batch([email(2), email(3)])] == ["accepted"] * 2

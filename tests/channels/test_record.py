"""record_results: outbox rows updated set-based, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, event

from tests.channels.helpers import message_rows, outbox_rows
from tidings.channels.record import record_results
from tidings.channels.types import SendResult
from tidings.crm.db import session_scope


def test_each_outcome_lands_on_its_row_in_one_statement_per_kind(store: Engine) -> None:
    ids = outbox_rows(store, [f"u{i}@example.com" for i in range(6)])
    results = [
        SendResult(ids[0], "accepted", "sendgrid", provider_message_id="x1", attempts=2),
        SendResult(ids[1], "accepted", "sendgrid", provider_message_id="x2"),
        SendResult(ids[2], "failed", "sendgrid", error="sendgrid 400: bad"),
        SendResult(ids[3], "retry", "sendgrid", error="sendgrid 503: busy", attempts=4),
        SendResult(ids[4], "retry", "sendgrid", error="timed out", in_doubt=True),
        SendResult(ids[5], "retry", "sendgrid", error="sendgrid 429: slow", retry_after=120),
    ]
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(store, "before_cursor_execute", count)
    with session_scope(store) as session:
        counts = record_results(session=session, results=results)
    event.remove(store, "before_cursor_execute", count)

    assert counts == {"sent": 2, "failed": 1, "retry": 3, "suppressed": 0}
    assert len([s for s in statements if s.lstrip().upper().startswith("UPDATE")]) == 4
    rows = message_rows(store)
    got = [(rows[i].status, rows[i].provider_message_id, rows[i].attempts) for i in ids]
    assert got == [
        ("sent", "x1", 2),
        ("sent", "x2", 1),
        ("failed", None, 1),
        ("queued", None, 4),
        ("in_flight", None, 1),
        ("queued", None, 1),
    ]
    assert rows[ids[2]].error == "sendgrid 400: bad" and rows[ids[0]].error is None
    assert rows[ids[0]].sent_at is not None and rows[ids[2]].sent_at is None

    with session_scope(store) as session:  # a later attempt adds to the count
        record_results(session=session, results=[SendResult(ids[3], "accepted", "sendgrid")])
    assert message_rows(store)[ids[3]].attempts == 5


def test_a_foreign_message_id_is_refused(store: Engine) -> None:
    with session_scope(store) as session, pytest.raises(ValueError, match=r"not a messages\.id"):
        record_results(session=session, results=[SendResult("abc", "accepted", "outbox")])

"""Write send results back to the outbox rows, set-based.

One UPDATE statement per kind of outcome (executed for many rows at once), and one INSERT for
the suppressions asked for (Twilio 21610, SMTP hard bounces), skipping addresses already
suppressed on that channel. ``attempts`` adds what this send used.

=========  ==========================================================================
result     ``messages`` row
=========  ==========================================================================
accepted   status ``sent``, provider_message_id, sent_at, error cleared
failed     status ``failed``, error = the provider's reason (``twilio 400 code 21610: ...``)
retry      status ``queued`` (safe to send again) and the error; ``in_flight`` when the
           result is ``in_doubt``: reconcile with the provider before any resend
=========  ==========================================================================

>>> with session_scope(engine) as session:          # doctest: +SKIP
...     record_results(session=session, results=channel.send_batch(messages))
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session

from channels.types import SendResult
from crm.db import insert_ignore
from crm.models import Message, MessageStatus, Suppression
from crm.types import utcnow

suppressions_t: Table = Suppression.__table__  # type: ignore[assignment]


def _message_id(result: SendResult) -> int:
    try:
        return int(result.message_id)
    except ValueError:
        raise ValueError(
            f"SendResult.message_id {result.message_id!r} is not a messages.id; "
            "record_results only updates outbox rows"
        ) from None


def record_results(
    *, session: Session, results: Iterable[SendResult], now: datetime | None = None
) -> dict[str, int]:
    """Update the ``messages`` rows named by ``results``; insert due suppressions.

    Returns how many rows each kind touched: ``{"sent": .., "failed": .., "retry": ..,
    "suppressed": ..}`` (suppressed counts the suppressions asked for, new or not).
    """
    now = now or utcnow()
    table: Table = Message.__table__  # type: ignore[assignment]
    groups: dict[str, list[dict[str, Any]]] = {"sent": [], "failed": [], "queued": [], "doubt": []}
    suppressions: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        row: dict[str, Any] = {
            "b_id": _message_id(result),
            "b_provider": result.provider,
            "b_attempts": result.attempts,
            "b_error": result.error,
            "b_now": now,
        }
        if result.status == "accepted":
            row["b_pmid"] = result.provider_message_id
            groups["sent"].append(row)
        elif result.status == "failed":
            groups["failed"].append(row)
        else:
            groups["doubt" if result.in_doubt else "queued"].append(row)
        if result.suppress and result.to:
            suppressions[(result.channel, result.to)] = {
                "channel": result.channel,
                "address": result.to,
                "reason": result.suppress_reason or "provider",
                "source": f"provider:{result.provider}",
                "detail": {"message_id": result.message_id, "error": result.error},
                "created_at": now,
            }

    common = {
        "provider": bindparam("b_provider"),
        "attempts": table.c.attempts + bindparam("b_attempts"),
        "updated_at": bindparam("b_now"),
    }
    where = table.c.id == bindparam("b_id")
    statements = {
        "sent": update(table)
        .where(where)
        .values(
            status=MessageStatus.SENT.value,
            provider_message_id=bindparam("b_pmid"),
            error=None,
            sent_at=bindparam("b_now"),
            **common,
        ),
        "failed": update(table)
        .where(where)
        .values(status=MessageStatus.FAILED.value, error=bindparam("b_error"), **common),
        "queued": update(table)
        .where(where)
        .values(status=MessageStatus.QUEUED.value, error=bindparam("b_error"), **common),
        "doubt": update(table)
        .where(where)
        .values(status=MessageStatus.IN_FLIGHT.value, error=bindparam("b_error"), **common),
    }
    for kind, rows in groups.items():
        if rows:
            session.execute(statements[kind], rows)
    if suppressions:
        session.execute(insert_ignore(session, suppressions_t), list(suppressions.values()))
    return {
        "sent": len(groups["sent"]),
        "failed": len(groups["failed"]),
        "retry": len(groups["queued"]) + len(groups["doubt"]),
        "suppressed": len(suppressions),
    }

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

With the ``token`` of the claim that sent them (``journeys.dispatch``), a ``failed`` or
``retry`` result is written only to rows that claim still owns: a worker that lost its lease
must not put back a row another worker now owns. ``accepted`` is always written: the provider
has the message, and knowing that is what prevents a second send.

>>> with session_scope(engine) as session:          # doctest: +SKIP
...     record_results(session=session, results=channel.send_batch(messages))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Table, case
from sqlalchemy.orm import Session

from tidings.channels.types import SendResult
from tidings.config import Settings
from tidings.crm.db import insert_ignore, update_rows
from tidings.crm.models import Message, MessageStatus, Suppression
from tidings.crm.suppression import erased_addresses
from tidings.crm.types import utcnow

suppressions_t: Table = Suppression.__table__  # type: ignore[assignment]


def _message_id(result: SendResult) -> int:
    try:
        return int(result.message_id)
    except ValueError:
        raise ValueError(
            f"SendResult.message_id {result.message_id!r} is not a messages.id; "
            "record_results only updates outbox rows"
        ) from None


def _owned(v: Mapping[str, Any]) -> Any:
    table: Table = Message.__table__  # type: ignore[assignment]
    return table.c.claim_token == v["claim_token"]


def record_results(
    *,
    session: Session,
    results: Iterable[SendResult],
    now: datetime | None = None,
    token: str | None = None,
    settings: Settings | None = None,
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
            "id": _message_id(result),
            "provider": result.provider,
            "attempts": result.attempts,
            "error": result.error,
        }
        if token is not None and result.status != "accepted":
            row["claim_token"] = token
        if result.status == "accepted":
            row["provider_message_id"] = result.provider_message_id
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

    status = {
        "sent": MessageStatus.SENT.value,
        "failed": MessageStatus.FAILED.value,
        "queued": MessageStatus.QUEUED.value,
        "doubt": MessageStatus.IN_FLIGHT.value,
    }
    for kind, rows in groups.items():

        def set_clause(v: Mapping[str, Any], kind: str = kind) -> dict[str, Any]:
            # a provider's reason may quote the address: not kept once the contact is erased
            reason = case((table.c.erased_at.is_(None), v["error"]), else_=None)
            clause = {
                "status": status[kind],
                "provider": v["provider"],
                "attempts": table.c.attempts + v["attempts"],
                "error": None if kind == "sent" else reason,
                "updated_at": now,
            }
            if kind == "sent":
                clause.update(provider_message_id=v["provider_message_id"], sent_at=now)
            return clause

        owned = None if token is None or kind == "sent" else _owned
        update_rows(session, table, rows, set_=set_clause, where=owned)
    if suppressions:
        for channel in {c for c, _ in suppressions}:  # not in clear again: an erased person's
            for address in erased_addresses(
                session, channel, [a for c, a in suppressions if c == channel], settings=settings
            ):
                suppressions.pop((channel, address), None)
    if suppressions:
        session.execute(insert_ignore(session, suppressions_t), list(suppressions.values()))
    return {
        "sent": len(groups["sent"]),
        "failed": len(groups["failed"]),
        "retry": len(groups["queued"]) + len(groups["doubt"]),
        "suppressed": len(suppressions),
    }

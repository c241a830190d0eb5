"""Reconcile messages left in flight: ask the provider before anything is sent again.

A message is ``in_flight`` from the commit just before its provider call until its result is
recorded. If the process dies in between (or the provider's answer was lost to a timeout), we
cannot know from our own records whether the provider has it. ``reconcile`` asks:

- the provider has it -> ``sent`` with the provider's id (it will not be sent again);
- the provider certainly does not -> back to ``queued`` (the next dispatch sends it);
- the provider cannot tell (SMTP keeps no queryable record; an API error) -> left in flight
  and counted as ``unknown``; ops decide (``tidings journey reconcile`` prints them).

Only messages in flight for longer than ``older_than`` are touched, so a live worker's
in-progress batch is never taken from it (PostgreSQL: rows are claimed ``FOR UPDATE SKIP
LOCKED`` as well).

>>> reconcile(runtime, older_than=timedelta(minutes=10))  # doctest: +SKIP
ReconcileStats(checked=12, sent=9, requeued=3, unknown=0, failed=0)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from crm.models import Contact, Enrollment, Message, MessageStatus
from crm.types import utcnow
from journeys.runtime import Runtime
from tidings.errors import InputError, PermanentError

messages_t: Table = Message.__table__  # type: ignore[assignment]


@dataclass
class ReconcileStats:
    checked: int = 0
    sent: int = 0
    requeued: int = 0
    unknown: int = 0
    failed: int = 0


def reconcile(
    runtime: Runtime,
    *,
    older_than: timedelta,
    now: datetime | None = None,
    chunk: int = 200,
) -> ReconcileStats:
    """Reconcile every message in flight longer than ``older_than``, ``chunk`` per
    transaction (a crash mid-way keeps what was done)."""
    now = now or utcnow()
    total = ReconcileStats()
    unknown: set[int] = set()  # asked already in this run: not again
    while True:
        stats = _reconcile_chunk(runtime, older_than=older_than, now=now, limit=chunk, skip=unknown)
        for name in ("checked", "sent", "requeued", "unknown", "failed"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        if stats.checked < chunk:
            return total


def _reconcile_chunk(
    runtime: Runtime, *, older_than: timedelta, now: datetime, limit: int, skip: set[int]
) -> ReconcileStats:
    stats = ReconcileStats()
    with Session(runtime.db) as session, session.begin():
        query = (
            select(Message, Contact, Enrollment.context)
            .join(Contact, Contact.id == Message.contact_id)
            .outerjoin(Enrollment, Enrollment.id == Message.enrollment_id)
            .where(
                Message.status == MessageStatus.IN_FLIGHT.value,
                Message.updated_at <= now - older_than,
                Message.id.not_in(skip),
            )
            .order_by(Message.id)
            .limit(limit)
        )
        if runtime.db.dialect.name == "postgresql":
            query = query.with_for_update(of=Message, skip_locked=True)
        rows = session.execute(query).all()
        stats.checked = len(rows)
        by_channel: dict[str, list[Any]] = defaultdict(list)
        updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for message, contact, context in rows:
            try:
                outbound = runtime.dispatcher.render(message, contact, context or {})
            except (PermanentError, InputError) as exc:
                updates["failed"].append(
                    {"b_id": message.id, "b_error": f"reconcile: {exc}", "b_provider": None}
                )
                continue
            by_channel[message.channel].append(outbound)
        for channel_name, batch in by_channel.items():
            channel = runtime.dispatcher.channels.get(channel_name)
            answers = channel.lookup(batch) if channel is not None else {}
            for outbound in batch:
                if outbound.message_id not in answers:
                    stats.unknown += 1
                    skip.add(int(outbound.message_id))
                    continue
                provider_id = answers[outbound.message_id]
                kind = "queued" if provider_id is None else "sent"
                updates[kind].append(
                    {"b_id": int(outbound.message_id), "b_error": None, "b_provider": provider_id}
                )
        values: dict[str, dict[str, Any]] = {
            "sent": {
                "status": MessageStatus.SENT.value,
                "sent_at": now,
                "provider_message_id": bindparam("b_provider"),
                "error": None,
            },
            "queued": {
                "status": MessageStatus.QUEUED.value,
                "next_attempt_at": None,
                "error": "reconciled: the provider had no record, sent again",
            },
            "failed": {"status": MessageStatus.FAILED.value, "error": bindparam("b_error")},
        }
        for kind, rows_of_kind in updates.items():
            session.execute(
                update(messages_t)
                .where(messages_t.c.id == bindparam("b_id"))
                .values(updated_at=now, **values[kind]),
                rows_of_kind,
            )
        stats.sent = len(updates["sent"])
        stats.requeued = len(updates["queued"])
        stats.failed = len(updates["failed"])
    return stats

"""Reconcile messages left in flight: ask the provider before anything is sent again.

A message is ``in_flight`` from the commit just before its provider call until its result is
recorded. A row whose ``handed_at`` is empty was claimed but never handed to a provider: it
goes back to ``queued`` without asking. For the others (the process died after the hand-over,
or the provider's answer was lost to a timeout) our own records cannot tell whether the
provider has it. ``reconcile`` asks:

- the provider has it -> ``sent`` with the provider's id (it will not be sent again);
- the provider certainly does not -> back to ``queued`` (the next dispatch sends it);
- the provider cannot tell (SMTP keeps no queryable record; an API error) -> left in flight
  and counted as ``unknown``; ops decide with ``resolve`` (``tidings journey reconcile
  --sent IDS`` after finding them in the relay's log, ``--resend IDS`` otherwise).

Only messages whose worker's lease has run out (``lease_until``: a live worker's heartbeat
keeps renewing it) and that are in flight for longer than ``older_than`` are touched, so a live
worker's batch is never taken from it however slow its provider (PostgreSQL: rows are taken
``FOR UPDATE SKIP LOCKED`` as well). A worker that was paused past its lease and comes back
finds its claim token gone at the hand-over and sends nothing it lost (journeys.dispatch).

A provider lookup that fails (an API error, a timeout, an exception the SDK raises) leaves its
rows in flight as ``unknown``, to be asked again at the next reconcile; the others go on.

>>> reconcile(runtime, older_than=timedelta(minutes=10))  # doctest: +SKIP
ReconcileStats(checked=12, sent=9, requeued=3, unknown=0, failed=0)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session

from tidings.crm.models import Contact, Enrollment, Message, MessageStatus
from tidings.crm.types import utcnow
from tidings.errors import InputError, PermanentError
from tidings.journeys.runtime import Runtime

messages_t: Table = Message.__table__  # type: ignore[assignment]
log = logging.getLogger(__name__)


def lease_expired() -> Any:
    """No live worker owns the row: its lease ran out (or it predates leases). Leases are
    wall-clock time (a heartbeat renews them), whatever ``now`` a caller reasons with."""
    return or_(Message.lease_until.is_(None), Message.lease_until <= utcnow())


@dataclass
class ReconcileStats:
    checked: int = 0
    sent: int = 0
    requeued: int = 0
    failed: int = 0
    unknown_ids: list[int] = field(default_factory=list)  # the provider could not tell

    @property
    def unknown(self) -> int:
        return len(self.unknown_ids)

    def add(self, other: ReconcileStats) -> None:
        self.checked += other.checked
        self.sent += other.sent
        self.requeued += other.requeued
        self.failed += other.failed
        self.unknown_ids += other.unknown_ids


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
    asked: set[int] = set()  # could not tell in this run: not asked again
    while True:
        stats = _reconcile_chunk(runtime, older_than=older_than, now=now, limit=chunk, skip=asked)
        total.add(stats)
        asked.update(stats.unknown_ids)
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
                lease_expired(),
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
            if message.handed_at is None:  # claimed, never handed over: nothing to ask
                updates["queued"].append({"b_id": message.id, "b_error": None, "b_provider": None})
                continue
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
            try:
                answers = channel.lookup(batch) if channel is not None else {}
            except Exception as exc:  # isolated: these rows stay unknown, the rest go on
                log.warning(
                    "%s lookup failed, %d left in flight: %s", channel_name, len(batch), exc
                )
                answers = {}
            for outbound in batch:
                if outbound.message_id not in answers:
                    stats.unknown_ids.append(int(outbound.message_id))
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
                "claim_token": None,
                "error": "reconciled: not with the provider, to be sent again",
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


def resolve(runtime: Runtime, ids: list[int], *, sent: bool, now: datetime | None = None) -> int:
    """A person's decision on messages reconcile could not settle: ``sent`` (found in the
    relay's log: never send again) or not (queue to send again). Only rows still in flight and
    owned by no live worker are touched; returns how many."""
    now = now or utcnow()
    values: dict[str, Any] = (
        {"status": MessageStatus.SENT.value, "sent_at": now, "error": "resolved by ops: sent"}
        if sent
        else {
            "status": MessageStatus.QUEUED.value,
            "next_attempt_at": None,
            "claim_token": None,
            "error": "resolved by ops: send again",
        }
    )
    with Session(runtime.db) as session, session.begin():
        done = session.connection().execute(
            update(messages_t)
            .where(
                messages_t.c.id.in_(ids),
                messages_t.c.status == MessageStatus.IN_FLIGHT.value,
                lease_expired(),
            )
            .values(updated_at=now, **values)
        )
        return int(done.rowcount)

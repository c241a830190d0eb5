"""Write verified webhook, tracking and event items into the CRM store, a batch at a time.

Items are the tagged union of web/items.py, interpreted here with an exhaustive ``match``;
each provider's payloads are read by its own module (``channels.sendgrid.parse_event``,
``channels.twilio.parse_status`` / ``parse_inbound``), this module writes what they say.
Every write is idempotent: provider events are deduplicated by
``UNIQUE(provider, provider_event_id)``, consents change only when they differ, message
statuses only move forward, and events carry an idempotency key, so a batch applied twice
(a consumer that died before XACK) changes nothing the second time.

>>> stats = apply_items(engine, [SendGridBatch(events=[...])])       # doctest: +SKIP
>>> stats.stored, stats.duplicates                                     # doctest: +SKIP
(100, 0)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, assert_never

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Table,
    any_,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from tidings.channels import sendgrid, twilio
from tidings.config import Settings
from tidings.crm.consent import ConsentWish, changes_t, set_consents, suppress, suppressions_t
from tidings.crm.db import insert_ignore
from tidings.crm.models import Channel, Contact, Message, MessageEvent, MessageStatus, Purpose
from tidings.crm.suppression import erased_addresses
from tidings.crm.types import utcnow
from tidings.web.items import (
    EventBatch,
    IngestItem,
    SendGridBatch,
    TrackingHit,
    TwilioInbound,
    TwilioStatus,
)

log = logging.getLogger("tidings.web")
messages_t: Table = Message.__table__  # type: ignore[assignment]
events_t: Table = MessageEvent.__table__  # type: ignore[assignment]
contacts_t: Table = Contact.__table__  # type: ignore[assignment]

MESSAGE_STATUS_BY_TYPE: dict[str, str] = {
    "processed": MessageStatus.SENT.value,
    "sent": MessageStatus.SENT.value,
    "delivered": MessageStatus.DELIVERED.value,
    "bounce": MessageStatus.BOUNCED.value,
    "dropped": MessageStatus.FAILED.value,
    "undelivered": MessageStatus.FAILED.value,
    "failed": MessageStatus.FAILED.value,
}
STATUS_RANK: dict[str, int] = {
    MessageStatus.QUEUED.value: 0,
    MessageStatus.IN_FLIGHT.value: 1,
    MessageStatus.SENT.value: 2,
    MessageStatus.DELIVERED.value: 3,
    MessageStatus.BOUNCED.value: 3,
    MessageStatus.FAILED.value: 3,
    MessageStatus.HELD.value: 9,
}
"""A message's status only moves up this ranking: a late ``sent`` never undoes ``delivered``."""


@dataclass
class ApplyStats:
    stored: int = 0
    duplicates: int = 0
    skipped: int = 0
    consent_changes: int = 0
    events: int = 0
    dead_lettered: int = 0
    errors: list[str] = field(default_factory=list)


def as_message_id(value: Any) -> int | None:
    """Our ``messages.id`` from a custom arg, query parameter or token, if it is one."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() and len(text) < 19 else None


def _when(value: Any) -> datetime:
    if isinstance(value, int | float) and 0 < value < 1e11:
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return utcnow()


def _known_messages(conn: Connection, ids: Iterable[int]) -> dict[int, tuple[int, str]]:
    """``{message id: (contact id, status)}`` for the ids that exist."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = conn.execute(
        select(messages_t.c.id, messages_t.c.contact_id, messages_t.c.status).where(
            _id_in(conn, messages_t.c.id, wanted)
        )
    )
    return {r.id: (r.contact_id, r.status) for r in rows}


def advance_statuses(
    conn: Connection, moves: dict[int, tuple[str, str | None]], now: datetime
) -> None:
    """Move messages to a new status where it ranks higher; ``moves[id] = (status, error)``."""
    by_target: dict[tuple[str, str | None], list[int]] = {}
    for message_id, target in moves.items():
        by_target.setdefault(target, []).append(message_id)
    for (status, error), ids in by_target.items():
        lower = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if error is not None:  # a reason may quote the address: not for an erased contact
            values["error"] = case((messages_t.c.erased_at.is_(None), error), else_=None)
        conn.execute(
            update(messages_t)
            .where(_id_in(conn, messages_t.c.id, ids), messages_t.c.status.in_(lower))
            .values(values)
        )


EVENT_COLUMNS = (
    "message_id",
    "provider",
    "provider_event_id",
    "type",
    "occurred_at",
    "received_at",
    "machine",
    "url",
    "payload",
)
PG_INSERT_EVENTS = (
    f"INSERT INTO message_events ({', '.join(EVENT_COLUMNS)}) "
    "SELECT m.id, r->>'v', r->>'e', r->>'t', (r->>'o')::timestamptz, "
    "(r->>'r')::timestamptz, (r->>'x')::boolean, "
    "CASE WHEN m.erased_at IS NULL THEN r->>'u' END, "
    "CASE WHEN m.erased_at IS NULL THEN r->'p' ELSE '{}'::jsonb END "
    "FROM jsonb_array_elements(%s::jsonb) AS r "
    "LEFT JOIN messages AS m ON m.id = (r->>'m')::bigint "
    "ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id"
)
"""PostgreSQL: one fixed statement with the whole batch as one JSON parameter (serialized by
orjson in C), whatever the batch size: psycopg prepares it once, where a multi-row VALUES
list would be re-parsed on every call. The join drops message ids that are not ours; for a
message of an erased contact the provider payload and the link are not kept."""


def _insert_events(conn: Connection, rows: list[dict[str, Any]], stats: ApplyStats) -> int:
    """Insert event rows, skipping known ``(provider, provider_event_id)``; the rows new."""
    if not rows:
        return 0
    unique = list({(r["provider"], r["provider_event_id"]): r for r in rows}.values())
    if conn.dialect.name == "postgresql":
        inserted = conn.exec_driver_sql(PG_INSERT_EVENTS, (_pack(unique),)).all()
    else:
        unique = _without_erased_parts(conn, unique)
        inserted = conn.execute(
            insert_ignore(conn, events_t).returning(events_t.c.id), unique
        ).all()
    stats.stored += len(inserted)
    stats.duplicates += len(rows) - len(inserted)
    return len(inserted)


def _without_erased_parts(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SQLite: what PG_INSERT_EVENTS does in SQL: no payload or link for the messages of an
    erased contact."""
    ids = {r["message_id"] for r in rows if r["message_id"] is not None}
    if not ids:
        return rows
    erased = set(
        conn.execute(
            select(messages_t.c.id).where(
                _id_in(conn, messages_t.c.id, ids), messages_t.c.erased_at.is_not(None)
            )
        ).scalars()
    )
    if not erased:
        return rows
    return [{**r, "payload": {}, "url": None} if r["message_id"] in erased else r for r in rows]


def _pack(unique: list[dict[str, Any]]) -> str:
    return orjson.dumps(
        [
            {
                "m": r["message_id"],
                "v": r["provider"],
                "e": r["provider_event_id"],
                "t": r["type"],
                "o": r["occurred_at"],
                "r": r["received_at"],
                "x": r["machine"],
                "u": r["url"],
                "p": r["payload"],
            }
            for r in unique
        ]
    ).decode()


PG_ADVANCE = (
    "UPDATE messages AS msg SET status = v.s, "
    "error = CASE WHEN msg.erased_at IS NULL THEN COALESCE(v.err, msg.error) END, "
    "updated_at = (v.at)::timestamptz "
    "FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, s text, err text, rank int, at text) "
    "WHERE msg.id = v.id AND (CASE msg.status "
    + " ".join(f"WHEN '{k}' THEN {r}" for k, r in STATUS_RANK.items())
    + " ELSE 9 END) < v.rank RETURNING msg.id"
)


def _pg_insert_and_advance(
    conn: Connection,
    rows: list[dict[str, Any]],
    moves: dict[int, tuple[str, str | None]],
    now: datetime,
    stats: ApplyStats,
) -> None:
    """PostgreSQL: the events insert and the status moves in one statement (one round trip)."""
    packed_moves = orjson.dumps(
        [
            {"id": mid, "s": s, "err": err, "rank": STATUS_RANK[s], "at": now}
            for mid, (s, err) in moves.items()
        ]
    ).decode()
    unique = list({(r["provider"], r["provider_event_id"]): r for r in rows}.values())
    sql = f"WITH ins AS ({PG_INSERT_EVENTS}), upd AS ({PG_ADVANCE}) SELECT id FROM ins"
    inserted = conn.exec_driver_sql(sql, (_pack(unique), packed_moves)).all()
    stats.stored += len(inserted)
    stats.duplicates += len(rows) - len(inserted)


def _id_in(conn: Connection, column: Any, ids: Iterable[int]) -> Any:
    """``column IN ids``; on PostgreSQL ``= ANY(array)``, one statement text for any count."""
    values = list(ids)
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam("ids", values, type_=ARRAY(BigInteger)))
    return column.in_(values)


DEAD_LETTER = "dead_letter"
"""The ``message_events.type`` of a provider event the store cannot hold as it came (nested
deeper than orjson writes, a NUL PostgreSQL refuses): kept as JSON text in ``payload.raw``
with the reason in ``payload.error``, without a message, once per distinct text."""


def dead_letter_rows(
    provider: str, dead: Sequence[tuple[str, str]], now: datetime
) -> list[dict[str, Any]]:
    """``message_events`` rows for dead-lettered events ``(JSON text, why)``."""
    rows = []
    for raw, why in dead:
        digest = hashlib.sha256(raw.encode("utf-8", "backslashreplace")).hexdigest()
        log.warning("%s event dead-lettered (%s): %s", provider, why, raw[:300])
        rows.append(
            {
                "message_id": None,
                "provider": provider,
                "provider_event_id": f"dead:{digest}",
                "type": DEAD_LETTER,
                "occurred_at": now,
                "received_at": now,
                "machine": False,
                "url": None,
                "payload": {"error": why, "raw": raw},
            }
        )
    return rows


def apply_sendgrid(
    conn: Connection,
    events: list[Any],
    stats: ApplyStats,
    dead: Sequence[tuple[str, str]] = (),
    *,
    settings: Settings | None = None,
) -> None:
    now = utcnow()
    parsed: list[tuple[sendgrid.SendGridEvent, int | None]] = []
    for raw in events:
        event = sendgrid.parse_event(raw)
        if event is None:
            stats.skipped += 1
            continue
        parsed.append((event, as_message_id(event.message_ref)))
    refs = (m for _, m in parsed if m is not None)
    # PostgreSQL checks the ids in the INSERT itself (a join); SQLite needs them looked up.
    known = None if conn.dialect.name == "postgresql" else _known_messages(conn, refs)
    rows: list[dict[str, Any]] = []
    moves: dict[int, tuple[str, str | None]] = {}
    suppressions: list[tuple[str, str, str, str, dict[str, Any]]] = []
    emails: dict[str, set[str]] = {}
    for event, message_id in parsed:
        kind = event.type
        mid = message_id if known is None or message_id in known else None
        rows.append(
            {
                "message_id": mid,
                "provider": "sendgrid",
                "provider_event_id": event.event_id,
                "type": kind,
                "occurred_at": _when(event.payload.get("timestamp")),
                "received_at": now,
                "machine": bool(event.payload.get("sg_machine_open")),
                "url": event.url,
                "payload": event.payload,
            }
        )
        # a blocked bounce is temporary: the message failed, the address is not bounced
        target = MESSAGE_STATUS_BY_TYPE.get(kind) if event.hard else MessageStatus.FAILED.value
        if mid is not None and target is not None:
            reason = event.reason
            moves[mid] = (target, f"sendgrid {kind}: {reason}" if reason else None)
        email = event.suppress_address
        if email is not None:
            source = event.source
            suppressions.append((Channel.EMAIL.value, email, kind, source, {"sg": event.payload}))
            emails.setdefault(source, set()).add(email)
    if dead:
        rows.extend(dead_letter_rows("sendgrid", dead, now))
        stats.dead_lettered += len(dead)
    if known is None and rows:
        _pg_insert_and_advance(conn, rows, moves, now, stats)
    else:
        _insert_events(conn, rows, stats)
        advance_statuses(conn, moves, now)
    suppress(conn, suppressions, settings=settings)
    for source, addresses in emails.items():
        contact_ids = conn.execute(
            select(contacts_t.c.id).where(contacts_t.c.email.in_(addresses))
        ).scalars()
        wishes = [
            ConsentWish(cid, Channel.EMAIL.value, Purpose.MARKETING.value, "revoked")
            for cid in contact_ids
        ]
        stats.consent_changes += len(set_consents(conn, wishes, source=source, now=now))


def apply_twilio_status(
    conn: Connection, item: TwilioStatus, stats: ApplyStats, *, settings: Settings | None = None
) -> None:
    form = item.form
    now = utcnow()
    callback = twilio.parse_status(form)
    if callback is None:
        stats.skipped += 1
        return
    message_id = as_message_id(item.message_id)
    known = _known_messages(conn, [message_id] if message_id else [])
    if message_id not in known:
        message_id = conn.execute(
            select(messages_t.c.id)
            .where(messages_t.c.provider_message_id == callback.sid, messages_t.c.channel == "sms")
            .limit(1)
        ).scalar()
    _insert_events(
        conn,
        [
            {
                "message_id": message_id,
                "provider": "twilio",
                "provider_event_id": callback.event_id,
                "type": callback.type,
                "occurred_at": now,
                "received_at": now,
                "machine": False,
                "url": None,
                "payload": form,
            }
        ],
        stats,
    )
    target = MESSAGE_STATUS_BY_TYPE.get(callback.type)
    if message_id is not None and target is not None:
        code = callback.error_code
        error = f"twilio {callback.status} code {code}" if code else None
        advance_statuses(conn, {message_id: (target, error)}, now)
    if callback.unsubscribed and callback.to:
        reason = "unsubscribed recipient (21610)"
        rows = [(Channel.SMS.value, callback.to, reason, "twilio:21610", dict(form))]
        suppress(conn, rows, settings=settings)


def apply_twilio_inbound(
    conn: Connection, item: TwilioInbound, stats: ApplyStats, *, settings: Settings | None = None
) -> None:
    """Store an inbound SMS; a STOP or START changes SMS consent once and in order.

    Keyed by Twilio's MessageSid (``message_events`` is unique on it): a replayed or retried
    request is a duplicate and changes nothing, even if consent moved since. Ordered by the
    time the webhook arrived (Twilio sends no time of its own): a change is applied to a
    contact only if it is newer than the contact's last SMS consent change of any source, so
    a START read late from the buffer does not undo a later unsubscribe."""
    form = item.form
    now = utcnow()
    sms = twilio.parse_inbound(form)
    if sms is None:
        stats.skipped += 1
        return
    received = _when(item.received_at) if item.received_at else now
    # from an erased person's phone: kept as a count, not their number or words
    erased = bool(erased_addresses(conn, Channel.SMS.value, [sms.phone], settings=settings))
    new = _insert_events(
        conn,
        [
            {
                "message_id": None,
                "provider": "twilio",
                "provider_event_id": sms.event_id,
                "type": sms.type,
                "occurred_at": received,
                "received_at": now,
                "machine": False,
                "url": None,
                "payload": {} if erased else form,
            }
        ],
        stats,
    )
    if sms.keyword not in {"stop", "start"} or not new:
        return
    status = "revoked" if sms.keyword == "stop" else "granted"
    contact_ids = list(
        conn.execute(select(contacts_t.c.id).where(contacts_t.c.phone == sms.phone)).scalars()
    )
    last = last_consent_changes(conn, contact_ids, Channel.SMS.value)
    current = [cid for cid in contact_ids if cid not in last or last[cid] < received]
    if len(current) < len(contact_ids):
        stats.skipped += 1
        log.info(
            "twilio %s %s older than the last SMS consent change of %d contact(s): not applied",
            sms.keyword,
            sms.sid,
            len(contact_ids) - len(current),
        )
    detail = {"keyword": sms.body.strip()[:40], "message_sid": sms.sid}
    wishes = [
        ConsentWish(cid, Channel.SMS.value, purpose.value, status, detail)
        for cid in current
        for purpose in Purpose
    ]
    stats.consent_changes += len(
        set_consents(conn, wishes, source=sms.source, now=now, occurred_at=received)
    )
    if sms.keyword == "start" and current:
        conn.execute(
            suppressions_t.delete().where(
                suppressions_t.c.channel == Channel.SMS.value,
                suppressions_t.c.address == sms.phone,
                suppressions_t.c.source.like("twilio:%"),
            )
        )


def last_consent_changes(
    conn: Connection, contact_ids: Sequence[int], channel: str
) -> dict[int, datetime]:
    """The time of each contact's latest consent change on ``channel`` (audit trail)."""
    if not contact_ids:
        return {}
    rows = conn.execute(
        select(changes_t.c.contact_id, func.max(changes_t.c.occurred_at))
        .where(changes_t.c.contact_id.in_(contact_ids), changes_t.c.channel == channel)
        .group_by(changes_t.c.contact_id)
    )
    return {cid: at for cid, at in rows if at is not None}


def apply_tracking(conn: Connection, items: list[TrackingHit], stats: ApplyStats) -> None:
    now = utcnow()
    refs = {as_message_id(i.message_id) for i in items}
    known = _known_messages(conn, (r for r in refs if r is not None))
    rows = []
    for item in items:
        mid = as_message_id(item.message_id)
        rows.append(
            {
                "message_id": mid if mid in known else None,
                "provider": "tracking",
                "provider_event_id": item.id,
                "type": item.type,
                "occurred_at": _when(item.at),
                "received_at": now,
                "machine": item.machine,
                "url": item.url,
                "payload": item.payload(),
            }
        )
    _insert_events(conn, rows, stats)


EventPoster = Callable[[list[dict[str, Any]]], int]


def apply_items(
    db: Engine,
    items: Sequence[IngestItem],
    *,
    post_events: EventPoster | None = None,
    settings: Settings | None = None,
) -> ApplyStats:
    """Write a batch of items: provider and tracking items in one transaction, then events.

    ``post_events`` handles ``EventBatch`` items (the event API's path into ``post_event``).
    """
    stats = ApplyStats()
    tracking: list[TrackingHit] = []
    posted: list[dict[str, Any]] = []
    with db.begin() as conn:
        for item in items:
            match item:
                case SendGridBatch():
                    apply_sendgrid(conn, item.events, stats, item.dead, settings=settings)
                case TwilioStatus():
                    apply_twilio_status(conn, item, stats, settings=settings)
                case TwilioInbound():
                    apply_twilio_inbound(conn, item, stats, settings=settings)
                case TrackingHit():
                    tracking.append(item)
                case EventBatch():
                    posted.extend(item.events)
                case _:
                    assert_never(item)
        if tracking:
            apply_tracking(conn, tracking, stats)
    if posted:
        if post_events is None:
            raise RuntimeError("events items need post_events (the event API runtime)")
        stats.events += post_events(posted)
    return stats

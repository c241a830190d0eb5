"""Write verified webhook, tracking and event items into the CRM store, a batch at a time.

Items are plain JSON-able dicts (so the Redis stream can carry them unchanged), tagged by
``k``: ``sg`` (a SendGrid event batch), ``tw_status`` (a Twilio status callback), ``tw_in`` (an
inbound SMS), ``track`` (an open or click) and ``events`` (event API posts). Every write is
idempotent: provider events are deduplicated by ``UNIQUE(provider, provider_event_id)``,
consents change only when they differ, message statuses only move forward, and events carry
an idempotency key, so a batch applied twice (a consumer that died before XACK) changes
nothing the second time.

>>> stats = apply_items(engine, [{"k": "sg", "events": [...]}])     # doctest: +SKIP
>>> stats.stored, stats.duplicates                                     # doctest: +SKIP
(100, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import BigInteger, Connection, Engine, Table, any_, bindparam, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from tidings.channels.types import MESSAGE_ID_ARG
from tidings.crm.consent import ConsentWish, set_consents, suppress
from tidings.crm.db import insert_ignore
from tidings.crm.models import Channel, Contact, Message, MessageEvent, MessageStatus, Purpose
from tidings.crm.types import utcnow

log = logging.getLogger("tidings.web")
messages_t: Table = Message.__table__  # type: ignore[assignment]
events_t: Table = MessageEvent.__table__  # type: ignore[assignment]
contacts_t: Table = Contact.__table__  # type: ignore[assignment]

SENDGRID_TYPES: dict[str, str] = {
    "processed": "processed",
    "deferred": "deferred",
    "delivered": "delivered",
    "open": "open",
    "click": "click",
    "bounce": "bounce",
    "dropped": "dropped",
    "spamreport": "complaint",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
    "group_resubscribe": "resubscribe",
}
"""SendGrid's event names -> ours; anything else is stored as ``unknown`` with its payload."""

SENDGRID_SUPPRESS = {"bounce", "dropped", "complaint", "unsubscribe"}
"""Our types that suppress the address and revoke its marketing email consent."""

TWILIO_TYPES: dict[str, str] = {
    "accepted": "queued",
    "queued": "queued",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "read": "read",
}

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

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})


@dataclass
class ApplyStats:
    stored: int = 0
    duplicates: int = 0
    skipped: int = 0
    consent_changes: int = 0
    events: int = 0
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
        if error is not None:
            values["error"] = error
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
    "(r->>'r')::timestamptz, (r->>'x')::boolean, r->>'u', r->'p' "
    "FROM jsonb_array_elements(%s::jsonb) AS r "
    "LEFT JOIN messages AS m ON m.id = (r->>'m')::bigint "
    "ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id"
)
"""PostgreSQL: one fixed statement with the whole batch as one JSON parameter (serialized by
orjson in C), whatever the batch size: psycopg prepares it once, where a multi-row VALUES
list would be re-parsed on every call. The join drops message ids that are not ours."""


def _insert_events(conn: Connection, rows: list[dict[str, Any]], stats: ApplyStats) -> None:
    if not rows:
        return
    unique = list({(r["provider"], r["provider_event_id"]): r for r in rows}.values())
    if conn.dialect.name == "postgresql":
        inserted = conn.exec_driver_sql(PG_INSERT_EVENTS, (_pack(unique),)).all()
    else:
        inserted = conn.execute(
            insert_ignore(conn, events_t).returning(events_t.c.id), unique
        ).all()
    stats.stored += len(inserted)
    stats.duplicates += len(rows) - len(inserted)


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
    "UPDATE messages AS msg SET status = v.s, error = COALESCE(v.err, msg.error), "
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


def apply_sendgrid(conn: Connection, events: list[Any], stats: ApplyStats) -> None:
    now = utcnow()
    parsed: list[tuple[dict[str, Any], str, int | None]] = []
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("sg_event_id"), str):
            stats.skipped += 1
            continue
        kind = SENDGRID_TYPES.get(str(event.get("event")), "unknown")
        custom = event.get("custom_args")
        ref = event.get(MESSAGE_ID_ARG)
        if ref is None and isinstance(custom, dict):
            ref = custom.get(MESSAGE_ID_ARG)
        parsed.append((event, kind, as_message_id(ref)))
    refs = (m for _, _, m in parsed if m is not None)
    # PostgreSQL checks the ids in the INSERT itself (a join); SQLite needs them looked up.
    known = None if conn.dialect.name == "postgresql" else _known_messages(conn, refs)
    rows: list[dict[str, Any]] = []
    moves: dict[int, tuple[str, str | None]] = {}
    suppressions: list[tuple[str, str, str, str, dict[str, Any]]] = []
    emails: dict[str, set[str]] = {}
    for event, kind, message_id in parsed:
        mid = message_id if known is None or message_id in known else None
        url = event.get("url") if kind == "click" else None
        rows.append(
            {
                "message_id": mid,
                "provider": "sendgrid",
                "provider_event_id": event["sg_event_id"][:255],
                "type": kind,
                "occurred_at": _when(event.get("timestamp")),
                "received_at": now,
                "machine": bool(event.get("sg_machine_open")),
                "url": url if isinstance(url, str) else None,
                "payload": event,
            }
        )
        target = MESSAGE_STATUS_BY_TYPE.get(kind)
        if kind == "bounce" and event.get("type") == "blocked":
            target = MessageStatus.FAILED.value  # a block is temporary: not a hard bounce
        if mid is not None and target is not None:
            reason = event.get("reason") if kind in {"bounce", "dropped"} else None
            moves[mid] = (target, f"sendgrid {kind}: {reason}" if reason else None)
        address = event.get("email")
        hard = not (kind == "bounce" and event.get("type") == "blocked")
        if kind in SENDGRID_SUPPRESS and hard and isinstance(address, str) and address.strip():
            email = address.strip().lower()
            source = f"sendgrid:{event.get('event')}"
            suppressions.append((Channel.EMAIL.value, email, kind, source, {"sg": event}))
            emails.setdefault(source, set()).add(email)
    if known is None and rows:
        _pg_insert_and_advance(conn, rows, moves, now, stats)
    else:
        _insert_events(conn, rows, stats)
        advance_statuses(conn, moves, now)
    suppress(conn, suppressions)
    for source, addresses in emails.items():
        contact_ids = conn.execute(
            select(contacts_t.c.id).where(contacts_t.c.email.in_(addresses))
        ).scalars()
        wishes = [
            ConsentWish(cid, Channel.EMAIL.value, Purpose.MARKETING.value, "revoked")
            for cid in contact_ids
        ]
        stats.consent_changes += len(set_consents(conn, wishes, source=source, now=now))


def apply_twilio_status(conn: Connection, item: dict[str, Any], stats: ApplyStats) -> None:
    form: dict[str, str] = item["form"]
    now = utcnow()
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    raw_status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if not sid or not raw_status:
        stats.skipped += 1
        return
    kind = TWILIO_TYPES.get(raw_status, "unknown")
    message_id = as_message_id(item.get("message_id"))
    known = _known_messages(conn, [message_id] if message_id else [])
    if message_id not in known:
        message_id = conn.execute(
            select(messages_t.c.id)
            .where(messages_t.c.provider_message_id == sid, messages_t.c.channel == "sms")
            .limit(1)
        ).scalar()
    code = form.get("ErrorCode") or None
    _insert_events(
        conn,
        [
            {
                "message_id": message_id,
                "provider": "twilio",
                "provider_event_id": f"{sid}:{raw_status}"[:255],
                "type": kind,
                "occurred_at": now,
                "received_at": now,
                "machine": False,
                "url": None,
                "payload": form,
            }
        ],
        stats,
    )
    target = MESSAGE_STATUS_BY_TYPE.get(kind)
    if message_id is not None and target is not None:
        error = f"twilio {raw_status} code {code}" if code else None
        advance_statuses(conn, {message_id: (target, error)}, now)
    if code == "21610" and form.get("To"):
        reason = "unsubscribed recipient (21610)"
        suppress(conn, [(Channel.SMS.value, form["To"], reason, "twilio:21610", dict(form))])


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


def apply_twilio_inbound(conn: Connection, item: dict[str, Any], stats: ApplyStats) -> None:
    form: dict[str, str] = item["form"]
    now = utcnow()
    phone = (form.get("From") or "").strip()
    body = form.get("Body") or ""
    keyword = inbound_keyword(body) or "inbound"
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if not sid or not phone:
        stats.skipped += 1
        return
    _insert_events(
        conn,
        [
            {
                "message_id": None,
                "provider": "twilio",
                "provider_event_id": f"{sid}:inbound"[:255],
                "type": keyword,
                "occurred_at": now,
                "received_at": now,
                "machine": False,
                "url": None,
                "payload": form,
            }
        ],
        stats,
    )
    if keyword not in {"stop", "start"}:
        return
    status = "revoked" if keyword == "stop" else "granted"
    contact_ids = list(conn.execute(select(contacts_t.c.id).where(contacts_t.c.phone == phone)))
    detail = {"keyword": body.strip()[:40], "message_sid": sid}
    wishes = [
        ConsentWish(row.id, Channel.SMS.value, purpose.value, status, detail)
        for row in contact_ids
        for purpose in Purpose
    ]
    source = f"twilio:{body.strip().upper()[:20]}"
    stats.consent_changes += len(set_consents(conn, wishes, source=source, now=now))
    if keyword == "start":
        from tidings.crm.consent import suppressions_t

        conn.execute(
            suppressions_t.delete().where(
                suppressions_t.c.channel == Channel.SMS.value,
                suppressions_t.c.address == phone,
                suppressions_t.c.source.like("twilio:%"),
            )
        )


def apply_tracking(conn: Connection, items: list[dict[str, Any]], stats: ApplyStats) -> None:
    now = utcnow()
    refs = {as_message_id(i.get("message_id")) for i in items}
    known = _known_messages(conn, (r for r in refs if r is not None))
    rows = []
    for item in items:
        mid = as_message_id(item.get("message_id"))
        rows.append(
            {
                "message_id": mid if mid in known else None,
                "provider": "tracking",
                "provider_event_id": str(item["id"]),
                "type": item["type"],
                "occurred_at": _when(item.get("at")),
                "received_at": now,
                "machine": bool(item.get("machine")),
                "url": item.get("url"),
                "payload": {k: v for k, v in item.items() if k not in {"k", "id", "type"}},
            }
        )
    _insert_events(conn, rows, stats)


EventPoster = Callable[[list[dict[str, Any]]], int]


def apply_items(
    db: Engine, items: list[dict[str, Any]], *, post_events: EventPoster | None = None
) -> ApplyStats:
    """Write a batch of items: provider and tracking items in one transaction, then events.

    ``post_events`` handles ``events`` items (the event API's path into ``post_event``).
    """
    stats = ApplyStats()
    tracking = [i for i in items if i.get("k") == "track"]
    with db.begin() as conn:
        for item in items:
            kind = item.get("k")
            if kind == "sg":
                apply_sendgrid(conn, item.get("events") or [], stats)
            elif kind == "tw_status":
                apply_twilio_status(conn, item, stats)
            elif kind == "tw_in":
                apply_twilio_inbound(conn, item, stats)
            elif kind not in {"track", "events"}:
                stats.skipped += 1
                log.warning("unknown ingest item kind %r skipped", kind)
        if tracking:
            apply_tracking(conn, tracking, stats)
    posted = [e for i in items if i.get("k") == "events" for e in i.get("events", [])]
    if posted:
        if post_events is None:
            raise RuntimeError("events items need post_events (the event API runtime)")
        stats.events += post_events(posted)
    return stats

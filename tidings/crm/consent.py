"""Consent and suppression writes: imports, webhooks, the unsubscribe page and STOP replies.

Every change of a consent lands in the audit trail (``consent_changes``) with its source
(``sendgrid:spamreport``, ``twilio:STOP``, ``unsubscribe:one-click``...); setting a consent to
the state it already has writes nothing, so a replayed webhook changes nothing.

>>> with engine.begin() as conn:  # doctest: +SKIP
...     set_consents(conn, [ConsentWish(7, "sms", "marketing", "revoked")], source="twilio:STOP")
{7}
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, select

from tidings.config import Settings
from tidings.crm.bulk import copy_rows, is_postgres, move, upsert
from tidings.crm.db import among, insert_ignore
from tidings.crm.models import Consent, ConsentChange, Suppression
from tidings.crm.suppression import erased_addresses
from tidings.crm.types import utcnow

consents_t: Table = Consent.__table__  # type: ignore[assignment]
changes_t: Table = ConsentChange.__table__  # type: ignore[assignment]
suppressions_t: Table = Suppression.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ConsentWish:
    contact_id: int
    channel: str
    purpose: str
    status: str
    detail: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def set_consents(
    conn: Connection,
    wishes: Iterable[ConsentWish],
    *,
    source: str,
    now: datetime | None = None,
    occurred_at: datetime | None = None,
    fresh: Collection[int] = (),
) -> set[int]:
    """Bring consents to the wished status; returns the contacts whose consent changed (each
    change audited). ``fresh``: contacts known to have no consent yet (created in this
    transaction), not looked up."""
    now = now or utcnow()
    wanted: dict[tuple[int, str, str], ConsentWish] = {}
    for wish in wishes:
        wanted[(wish.contact_id, wish.channel, wish.purpose)] = wish
    if not wanted:
        return set()
    current = stored_consents(conn, {k[0] for k in wanted} - set(fresh))
    audit, changed = consent_changes(
        {key: (wish.status, wish.detail) for key, wish in wanted.items()},
        current,
        source=source,
        now=now,
        occurred_at=occurred_at,
    )
    write_changes(conn, audit)
    return changed


ConsentKey = tuple[int, str, str]
"""(contact_id, channel, purpose)."""


def stored_consents(conn: Connection, contact_ids: Collection[int]) -> dict[ConsentKey, str]:
    """The stored consent statuses of these contacts (one lookup)."""
    if not contact_ids:
        return {}
    rows = conn.execute(
        select(
            consents_t.c.contact_id,
            consents_t.c.channel,
            consents_t.c.purpose,
            consents_t.c.status,
        ).where(among(conn, consents_t.c.contact_id, contact_ids))
    ).all()  # fetched at once: iterating a result fetches row by row
    return {(contact_id, channel, purpose): status for contact_id, channel, purpose, status in rows}


def consent_changes(
    wanted: Mapping[ConsentKey, tuple[str, dict[str, Any]]],
    current: Mapping[ConsentKey, str],
    *,
    source: str,
    now: datetime,
    occurred_at: datetime | None = None,
) -> tuple[list[dict[str, Any]], set[int]]:
    """The audit rows that bring the ``current`` statuses to the ``wanted`` ones (status and
    the audit's detail; a wish for the status a consent already has gives none), and the
    contacts they change."""
    audit = []
    changed: set[int] = set()
    for key, (status, detail) in wanted.items():
        previous = current.get(key)
        if previous == status:
            continue
        changed.add(key[0])
        audit.append(
            {
                "contact_id": key[0],
                "channel": key[1],
                "purpose": key[2],
                "status": status,
                "previous_status": previous,
                "source": source,
                "occurred_at": occurred_at or now,
                "recorded_at": now,
                "detail": detail,
            }
        )
    return audit, changed


#: How a consent is written from its audit row (consents column -> consent_changes column).
CONSENT_FROM_AUDIT = {
    "contact_id": "contact_id",
    "channel": "channel",
    "purpose": "purpose",
    "status": "status",
    "source": "source",
    "updated_at": "recorded_at",
}
CONSENT_KEY = ("contact_id", "channel", "purpose")
CONSENT_UPDATE = ("status", "source", "updated_at")


def write_changes(conn: Connection, audit: list[dict[str, Any]]) -> None:
    """New and changed consents, and their audit trail, from the audit rows: on PostgreSQL one
    COPY into a staging table feeds both tables (one statement each); SQLite: executemany."""
    if not audit:
        return
    if is_postgres(conn):
        stage = copy_rows(conn, changes_t, list(audit[0]), audit)
        move(conn, stage, consents_t, CONSENT_FROM_AUDIT, CONSENT_KEY, CONSENT_UPDATE)
        move(conn, stage, changes_t, {c: c for c in audit[0]})
        return
    consents = [{c: row[a] for c, a in CONSENT_FROM_AUDIT.items()} for row in audit]
    upsert(conn, consents_t, consents, key=CONSENT_KEY, update=CONSENT_UPDATE)
    upsert(conn, changes_t, audit)


def suppress(
    conn: Connection,
    rows: Iterable[tuple[str, str, str, str, dict[str, Any]]],
    *,
    settings: Settings | None = None,
) -> None:
    """Add suppressions ``(channel, address, reason, source, detail)``; known ones stay. The
    address of an erased person is not stored again (its keyed hash already suppresses it)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    now = utcnow()
    for channel, address, reason, source, detail in rows:
        seen.setdefault(
            (channel, address),
            {
                "channel": channel,
                "address": address,
                "reason": reason,
                "source": source,
                "detail": detail,
                "created_at": now,
            },
        )
    for channel in {c for c, _ in seen}:
        addresses = [a for c, a in seen if c == channel]
        for address in erased_addresses(conn, channel, addresses, settings=settings):
            seen.pop((channel, address), None)
    if seen:
        conn.execute(insert_ignore(conn, suppressions_t), list(seen.values()))

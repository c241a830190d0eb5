"""The contact card: who the contact is and everything that happened, in time order.

Events, orders, messages (each with its deliveries, opens, clicks and bounces), and consent
changes, merged into one timeline: the view a colleague needs to take over a customer.
Served by ``GET /v1/contacts/{ref}`` and printed by ``tidings contacts show REF``.

>>> card = contact_card(engine, "C0002")                             # doctest: +SKIP
>>> [item["kind"] for item in card["timeline"]][:3]                  # doctest: +SKIP
['consent', 'order', 'message']
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select

from tidings.crm.models import (
    Consent,
    ConsentChange,
    Contact,
    Event,
    Message,
    MessageEvent,
    Order,
    Suppression,
    TopicSubscription,
)

TIMELINE_LIMIT = 5000


def find_contact_id(db: Engine, ref: str) -> int | None:
    """A contact id from ``#id`` or a numeric id, an external id, or an email."""
    ref = ref.strip()
    with db.connect() as conn:
        if ref.startswith("#") and ref[1:].isdigit():
            return conn.execute(select(Contact.id).where(Contact.id == int(ref[1:]))).scalar()
        found = conn.execute(
            select(Contact.id)
            .where(or_(Contact.external_id == ref, Contact.email == ref.lower()))
            .order_by(Contact.id)
            .limit(1)
        ).scalar()
        if found is None and ref.isdigit() and len(ref) < 19:
            found = conn.execute(select(Contact.id).where(Contact.id == int(ref))).scalar()
    return found


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def contact_card(db: Engine, ref: str) -> dict[str, Any] | None:
    """The card of the contact ``ref`` names, or None if there is none."""
    contact_id = find_contact_id(db, ref)
    if contact_id is None:
        return None
    with db.connect() as conn:
        contact = conn.execute(select(Contact).where(Contact.id == contact_id)).mappings().one()
        consents = conn.execute(
            select(Consent.channel, Consent.purpose, Consent.status, Consent.source).where(
                Consent.contact_id == contact_id
            )
        ).mappings()
        topics = conn.execute(
            select(
                TopicSubscription.channel,
                TopicSubscription.topic,
                TopicSubscription.status,
                TopicSubscription.source,
            ).where(TopicSubscription.contact_id == contact_id)
        ).mappings()
        addresses = [a for a in (contact["email"], contact["phone"]) if a]
        suppressions = conn.execute(
            select(Suppression.channel, Suppression.address, Suppression.reason).where(
                Suppression.address.in_(addresses)
            )
        ).mappings()
        timeline: list[dict[str, Any]] = []
        for e in conn.execute(
            select(Event).where(Event.contact_id == contact_id).limit(TIMELINE_LIMIT)
        ).mappings():
            timeline.append(
                {
                    "at": _iso(e["occurred_at"]),
                    "kind": "event",
                    "name": e["name"],
                    "properties": e["properties"],
                    "source": e["source"],
                }
            )
        for o in conn.execute(
            select(Order).where(Order.contact_id == contact_id).limit(TIMELINE_LIMIT)
        ).mappings():
            timeline.append(
                {
                    "at": _iso(o["placed_at"]),
                    "kind": "order",
                    "order_id": o["order_id"],
                    "total": str(o["total"]),
                    "currency": o["currency"],
                    "status": o["status"],
                }
            )
        messages = {
            m["id"]: {
                "at": _iso(m["sent_at"] or m["created_at"]),
                "kind": "message",
                "message_id": m["id"],
                "channel": m["channel"],
                "purpose": m["purpose"],
                "template": m["template"],
                "subject": m["subject"],
                "to": m["to_address"],
                "status": m["status"],
                "error": m["error"],
                "events": [],
            }
            for m in conn.execute(
                select(Message).where(Message.contact_id == contact_id).limit(TIMELINE_LIMIT)
            ).mappings()
        }
        if messages:
            for ev in conn.execute(
                select(
                    MessageEvent.message_id,
                    MessageEvent.type,
                    MessageEvent.occurred_at,
                    MessageEvent.machine,
                    MessageEvent.url,
                    MessageEvent.provider,
                )
                .where(MessageEvent.message_id.in_(list(messages)))
                .order_by(MessageEvent.occurred_at, MessageEvent.id)
            ).mappings():
                messages[ev["message_id"]]["events"].append(
                    {
                        "at": _iso(ev["occurred_at"]),
                        "type": ev["type"],
                        "machine": ev["machine"],
                        "url": ev["url"],
                        "provider": ev["provider"],
                    }
                )
        timeline.extend(messages.values())
        for c in conn.execute(
            select(ConsentChange)
            .where(ConsentChange.contact_id == contact_id)
            .limit(TIMELINE_LIMIT)
        ).mappings():
            timeline.append(
                {
                    "at": _iso(c["occurred_at"]),
                    "kind": "consent",
                    "channel": c["channel"],
                    "purpose": c["purpose"],
                    "status": c["status"],
                    "previous_status": c["previous_status"],
                    "source": c["source"],
                    **({"topic": c["topic"]} if c["topic"] else {}),
                }
            )
    timeline.sort(key=lambda item: item["at"] or "")
    fields = ("external_id", "email", "phone", "first_name", "last_name", "locale", "timezone")
    return {
        "id": contact_id,
        **{f: contact[f] for f in fields},
        "attributes": contact["attributes"],
        "created_at": _iso(contact["created_at"]),
        "updated_at": _iso(contact["updated_at"]),
        "erased_at": _iso(contact["erased_at"]),  # an anonymous row left by an erasure
        "consents": [dict(c) for c in consents],
        "topics": [dict(t) for t in topics],  # own choices; other topics are at their default
        "suppressions": [dict(s) for s in suppressions],
        "timeline": timeline,
    }

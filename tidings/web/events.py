"""The event API's request models and its path into ``journeys.triggers.post_event``.

An event names its contact by ``contact_id``, ``external_id`` or ``email``; ``occurred_at`` is
fixed when the request arrives (so a buffered event replayed by the consumer derives the same
idempotency key); ``post_event`` stores it once, enrols, wakes waiting enrollments and runs a
transactional journey (``order.shipped`` -> SMS) at once.

>>> post_many(runtime, [{"external_id": "C0002", "name": "order.shipped",
...                      "occurred_at": "2026-11-24T10:00:00+00:00"}])     # doctest: +SKIP
[{'index': 0, 'event_id': 41, 'duplicate': False, 'sent': 1, ...}]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Engine, or_, select

from tidings.crm.models import Contact
from tidings.web.jsonsafe import StorableModel
from tidings.web.store import EventPoster

log = logging.getLogger("tidings.ingest")
MAX_BATCH = 1000


class ContactRef(StorableModel):
    contact_id: int | None = Field(None, ge=1, le=2**62, description="Our contact id.")
    external_id: str | None = Field(
        None, min_length=1, max_length=255, description="The shop's id."
    )
    email: str | None = Field(None, min_length=3, max_length=320, description="Email address.")

    @model_validator(mode="after")
    def _one_ref(self) -> ContactRef:
        if self.contact_id is None and self.external_id is None and self.email is None:
            raise ValueError("name the contact: give contact_id, external_id or email")
        return self


class EventIn(ContactRef):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "external_id": "C0002",
                "name": "order.shipped",
                "properties": {
                    "order": {
                        "number": "O1",
                        "carrier": "DHL",
                        "tracking_url": "https://track.example.com/O1",
                    }
                },
            }
        },
    )

    name: str = Field(min_length=1, max_length=200, description="e.g. order.shipped")
    properties: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime | None = Field(None, description="ISO 8601; default: received time")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="Same key, same event: stored once."
    )


class EventResult(BaseModel):
    index: int
    status: str = Field(description="stored, duplicate, queued (buffered) or rejected")
    event_id: int | None = None
    sent: int = 0
    failed: int = 0
    retry: int = Field(0, description="not sent now, queued again (the provider was unreachable)")
    enrollments: dict[str, int] = Field(default_factory=dict)
    failures: list[dict[str, Any]] = Field(
        default_factory=list, description="why messages were not sent: status, reason, count"
    )
    error: str | None = None


def to_item(event: EventIn, *, now: datetime, key: str | None, source: str) -> dict[str, Any]:
    """The JSON-able form an event travels in (through the stream or straight to posting)."""
    occurred = event.occurred_at or now
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=UTC)
    return {
        "contact_id": event.contact_id,
        "external_id": event.external_id,
        "email": event.email.strip().lower() if event.email else None,
        "name": event.name,
        "properties": event.properties,
        "occurred_at": occurred.isoformat(),
        "idempotency_key": event.idempotency_key or key,
        "source": source,
    }


def resolve(db: Engine, items: list[dict[str, Any]]) -> list[int | None]:
    """The contact id of each item (None where no contact matches)."""
    ids = {i["contact_id"] for i in items if i.get("contact_id")}
    exts = {i["external_id"] for i in items if i.get("external_id")}
    emails = {i["email"] for i in items if i.get("email")}
    by_id: set[int] = set()
    by_ext: dict[str, int] = {}
    by_email: dict[str, int] = {}
    with db.connect() as conn:
        rows = conn.execute(
            select(Contact.id, Contact.external_id, Contact.email)
            .where(
                or_(
                    Contact.id.in_(ids),
                    Contact.external_id.in_(exts),
                    Contact.email.in_(emails),
                ),
                Contact.erased_at.is_(None),  # an erased contact takes no more events
            )
            .order_by(Contact.id)
        )
        for cid, ext, email in rows:
            by_id.add(cid)
            if ext:
                by_ext[ext] = cid
            if email:
                by_email.setdefault(email, cid)
    found: list[int | None] = []
    for item in items:
        if item.get("contact_id"):
            found.append(item["contact_id"] if item["contact_id"] in by_id else None)
        elif item.get("external_id"):
            found.append(by_ext.get(item["external_id"]))
        else:
            found.append(by_email.get(item.get("email") or ""))
    return found


def post_many(runtime: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Post events; one result per item, in order. An event that may start a journey or
    convert goes through ``post_event`` (enrol, transactional send); the others are stored in
    one statement (``store_events``). Either way the change is queued for the live segments
    that read it, in the event's transaction; the live loop evaluates it
    (``segments.live``)."""
    from tidings.crm.types import utcnow
    from tidings.journeys.triggers import post_event, starts_something, store_events

    now = utcnow()
    versions = runtime.engine.versions()
    results: list[dict[str, Any] | None] = [None] * len(items)
    quiet: list[tuple[int, dict[str, Any]]] = []
    for index, (item, contact_id) in enumerate(zip(items, resolve(runtime.db, items), strict=True)):
        if contact_id is None:
            results[index] = {"index": index, "status": "rejected", "error": "no such contact"}
            continue
        event = {
            "contact_id": contact_id,
            "name": item["name"],
            "properties": item.get("properties") or {},
            "occurred_at": datetime.fromisoformat(item["occurred_at"]),
            "idempotency_key": item.get("idempotency_key"),
            "source": item.get("source") or "api",
        }
        if not starts_something(versions, item["name"]):
            quiet.append((index, event))
            continue
        outcome = post_event(runtime, **event, now=now, live=False)
        results[index] = {
            "index": index,
            "status": "duplicate" if outcome.duplicate else "stored",
            "event_id": outcome.event_id,
            "sent": outcome.sent,
            "failed": outcome.failed,
            "retry": outcome.retry,
            "failures": outcome.failures,
            "enrollments": {k: len(v) for k, v in outcome.enrollments.items()},
        }
    ids = store_events(runtime, [e for _, e in quiet], versions=versions, now=now)
    for (index, _), event_id in zip(quiet, ids, strict=True):
        results[index] = {
            "index": index,
            "status": "stored" if event_id is not None else "duplicate",
            "event_id": event_id,
            "sent": 0,
            "failed": 0,
            "retry": 0,
            "failures": [],
            "enrollments": {},
        }
    return [r for r in results if r is not None]


def make_poster(runtime: Any, *, settle: Callable[[], Any] | None = None) -> EventPoster:
    """What the consumer calls for buffered events; unknown contacts are logged and dropped.
    After each batch ``settle`` runs (default: the live loop drained in this process, as
    ``tidings ingest`` runs no other; the web app passes its loop's nudge)."""

    def post(items: list[dict[str, Any]]) -> int:
        results = post_many(runtime, items)
        for result in results:
            if result["status"] == "rejected":
                log.warning(
                    "event dropped: %s", result["error"], extra={"kind": "event", "count": 1}
                )
        if settle is not None:
            settle()
        else:
            from tidings.segments.live import drain

            drain(runtime.engine)
        return sum(1 for r in results if r["status"] == "stored")

    return post

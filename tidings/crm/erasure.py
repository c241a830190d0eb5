"""Export and erasure of one person's data (GDPR articles 15, 17 and 20).

``export_contact`` gives everything the store holds about a contact as one JSON document, one
section per table (``POLICY`` names them all). ``erase_contact`` removes that data in one
transaction, table by table as ``POLICY`` says: what no figure counts is deleted; what reports,
experiments and attribution count (enrollments, messages and their events, assignments,
conversions, attributions, and the events and orders conversions point at) is kept without
anything personal, on the contact row itself, which stays as an anonymous row (its id keeps
the control-group hash and every join intact). The person's email, phone and external id are
kept only as keyed hashes (crm/suppression.py), so no later import brings them back; the
erasure is logged in ``erasures`` with who asked and what was removed per table.

Erasing twice changes nothing the second time (an erasure that finds nothing left is not
logged again). A journey sending to the contact at that moment is safe: queued messages and
messages claimed but not yet handed to a provider are held, and their claim is taken away,
so the worker's fence refuses them (journeys/dispatch.py); a message already with the
provider keeps its claim, and what comes back for it (the send result, webhooks) is stored
without personal data (``messages.erased_at``). The dispatcher never renders a message of an
erased contact.

>>> result = erase_contact(engine, 7, actor="cli:ann")                 # doctest: +SKIP
>>> result.counts["messages"]                                          # doctest: +SKIP
{'anonymised': 3, 'held': 1}
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    and_,
    cast,
    delete,
    insert,
    literal,
    or_,
    select,
    update,
)

from tidings.config import Settings, get_settings
from tidings.crm.db import update_rows
from tidings.crm.models import (
    Assignment,
    AttributeChange,
    Attribution,
    Base,
    Consent,
    ConsentChange,
    Contact,
    Conversion,
    Enrollment,
    Erasure,
    ErasureSuppression,
    Event,
    Experiment,
    Journey,
    Message,
    MessageEvent,
    MessageStatus,
    OptInRequest,
    Order,
    SegmentChange,
    SegmentMembership,
    Suppression,
    TestSend,
    TopicSubscription,
)
from tidings.crm.suppression import Identity, check_identity, suppress_identity
from tidings.crm.types import utcnow

FORMAT = "tidings.contact-export/1"
ERASED_ERROR = "contact erased: not sent"
ERASED = "erased"

T = dict[str, Table]
_tables: T = {name: table for name, table in Base.metadata.tables.items()}
contacts_t = _tables[Contact.__tablename__]
consents_t = _tables[Consent.__tablename__]
changes_t = _tables[ConsentChange.__tablename__]
suppressions_t = _tables[Suppression.__tablename__]
events_t = _tables[Event.__tablename__]
orders_t = _tables[Order.__tablename__]
enrollments_t = _tables[Enrollment.__tablename__]
messages_t = _tables[Message.__tablename__]
message_events_t = _tables[MessageEvent.__tablename__]
assignments_t = _tables[Assignment.__tablename__]
conversions_t = _tables[Conversion.__tablename__]
attributions_t = _tables[Attribution.__tablename__]
memberships_t = _tables[SegmentMembership.__tablename__]
queued_t = _tables[SegmentChange.__tablename__]
history_t = _tables[AttributeChange.__tablename__]
topics_t = _tables[TopicSubscription.__tablename__]
optins_t = _tables[OptInRequest.__tablename__]
test_sends_t = _tables[TestSend.__tablename__]
erasures_t = _tables[Erasure.__tablename__]
erasure_suppressions_t = _tables[ErasureSuppression.__tablename__]
journeys_t = _tables[Journey.__tablename__]
experiments_t = _tables[Experiment.__tablename__]

POLICY: dict[str, str] = {
    "contacts": "anonymised: identity, names, locale, timezone, attributes and scores cleared; "
    "the row stays (its id keeps reports' joins and the control-group hash)",
    "consents": "deleted",
    "consent_changes": "deleted",
    "suppressions": "deleted: the rows of the contact's email and phone (the keyed-hash "
    "suppression replaces them)",
    "events": "deleted, except those a conversion points at: kept as name and time only",
    "orders": "deleted, except those a conversion points at: kept as amount, currency, status "
    "and time (order id replaced, attributes such as addresses removed)",
    "enrollments": "anonymised: context (trigger data) and entry key removed; active ones exit "
    "with exit_reason 'erased'",
    "messages": "anonymised: address, subject, error, meta removed; queued or claimed ones held "
    "(never sent); the sandbox outbox files deleted",
    "message_events": "anonymised: provider payload and link query removed (type, time, machine "
    "flag kept); events without a message naming the contact's email or phone deleted",
    "segment_memberships": "deleted",
    "segment_changes": "deleted (changes queued for the live segments, not yet evaluated)",
    "attribute_changes": "deleted (past attribute values), after the contact is anonymised",
    "topic_subscriptions": "deleted",
    "optin_requests": "deleted",
    "test_sends": "deleted (test and seed copies rendered for the contact; never in a figure)",
    "assignments": "kept: experiment and variant only",
    "conversions": "kept: value, currency, time and what earned it",
    "attributions": "kept: model, weight and value",
    "erasures": "kept: the log of this erasure (who, when, counts)",
    "erasure_suppressions": "kept: keyed hashes of the email, phone and external id",
}
"""What an erasure does to each table holding data about a person; the export has one section
per table too. tests/crm/test_erasure.py fails when a table that refers to a contact is missing
here."""


class ContactNotFound(LookupError):
    pass


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in conn.execute(query).mappings()]


def _address_match(column: Any, contact: Any) -> Any:
    addresses = [a for a in (contact["email"], contact["phone"]) if a]
    return column.in_(addresses) if addresses else literal(False)


def _orphan_events_of(contact: Any) -> Any:
    """Message events without a message (inbound SMS, events for unknown messages) whose
    payload names the contact's email or phone."""
    text = cast(message_events_t.c.payload, String)
    needles = [a for a in (contact["email"], contact["phone"]) if a]
    if not needles:
        return literal(False)
    return and_(
        message_events_t.c.message_id.is_(None),
        or_(*(text.contains(n, autoescape=True) for n in needles)),
    )


def export_contact(db: Engine, contact_id: int) -> dict[str, Any]:
    """Everything stored about the contact, as one JSON-ready document (article 15 and 20)."""
    with db.connect() as conn:
        contact = (
            conn.execute(select(contacts_t).where(contacts_t.c.id == contact_id))
            .mappings()
            .one_or_none()
        )
        if contact is None:
            raise ContactNotFound(contact_id)
        cid = contacts_t.c.id == contact_id
        mine = select(messages_t.c.id).where(messages_t.c.contact_id == contact_id)
        conversions = select(conversions_t.c.id).where(conversions_t.c.contact_id == contact_id)
        erasures = select(erasures_t.c.id).where(erasures_t.c.contact_id == contact_id)

        def of(table: Table, named: tuple[Table, Any, str] | None = None) -> Any:
            """The contact's rows of ``table``; ``named``: (table, key, label) whose ``name``
            is added, e.g. the journey's name of an enrollment."""
            query = select(table)
            if named is not None:
                other, key, label = named
                query = select(table, other.c.name.label(label)).join(other, other.c.id == key)
            return query.where(table.c.contact_id == contact_id).order_by(table.c.id)

        sections: dict[str, Any] = {
            "contacts": _rows(conn, select(contacts_t).where(cid)),
            "consents": _rows(conn, of(consents_t)),
            "consent_changes": _rows(conn, of(changes_t)),
            "suppressions": _rows(
                conn,
                select(suppressions_t)
                .where(_address_match(suppressions_t.c.address, contact))
                .order_by(suppressions_t.c.id),
            ),
            "events": _rows(conn, of(events_t)),
            "orders": _rows(conn, of(orders_t)),
            "enrollments": _rows(
                conn, of(enrollments_t, (journeys_t, enrollments_t.c.journey_id, "journey"))
            ),
            "messages": _rows(conn, of(messages_t)),
            "message_events": _rows(
                conn,
                select(message_events_t)
                .where(or_(message_events_t.c.message_id.in_(mine), _orphan_events_of(contact)))
                .order_by(message_events_t.c.id),
            ),
            "segment_memberships": _rows(conn, of(memberships_t)),
            "segment_changes": _rows(conn, of(queued_t)),
            "attribute_changes": _rows(conn, of(history_t)),
            "topic_subscriptions": _rows(conn, of(topics_t)),
            "optin_requests": _rows(conn, of(optins_t)),
            "test_sends": _rows(conn, of(test_sends_t)),
            "assignments": _rows(
                conn,
                of(assignments_t, (experiments_t, assignments_t.c.experiment_id, "experiment")),
            ),
            "conversions": _rows(conn, of(conversions_t)),
            "attributions": _rows(
                conn,
                select(attributions_t)
                .where(attributions_t.c.conversion_id.in_(conversions))
                .order_by(attributions_t.c.id),
            ),
            "erasures": _rows(conn, of(erasures_t)),
            "erasure_suppressions": _rows(
                conn,
                select(
                    erasure_suppressions_t.c.kind,
                    erasure_suppressions_t.c.created_at,
                    erasure_suppressions_t.c.released_at,
                    erasure_suppressions_t.c.erasure_id,
                )
                .where(erasure_suppressions_t.c.erasure_id.in_(erasures))
                .order_by(erasure_suppressions_t.c.id),
            ),
        }
    assert set(sections) == set(POLICY), "every table of POLICY has a section"
    profile = sections["contacts"][0]
    return {
        "format": FORMAT,
        "exported_at": utcnow().isoformat(),
        "contact": profile,
        "erased": profile["erased_at"] is not None,
        "tables": {name: rows for name, rows in sections.items() if name != "contacts"},
        "counts": {name: len(rows) for name, rows in sections.items()},
    }


@dataclass
class ErasureResult:
    contact_id: int
    erasure_id: int | None  # the erasure that removed the data (the first, when already done)
    already: bool  # nothing was left to remove
    erased_at: datetime | None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "contact_id": self.contact_id,
            "erasure_id": self.erasure_id,
            "status": "already erased" if self.already else "erased",
            "erased_at": self.erased_at.isoformat() if self.erased_at else None,
            "counts": self.counts,
        }


def find_erasure(db: Engine, ref: str, *, settings: Settings | None = None) -> ErasureResult | None:
    """The erasure of the person ``ref`` (an external id, email or E.164 phone) named, if they
    were erased: how a second erasure request by the same reference is answered."""
    ref = ref.strip()
    identity = Identity(
        external_id=ref or None,
        email=ref.lower() if "@" in ref else None,
        phone=ref if ref.startswith("+") else None,
    )
    with db.connect() as conn:
        hit = check_identity(conn, identity, settings=settings)
        if hit is None:
            return None
        contact_id = conn.execute(
            select(erasures_t.c.contact_id).where(erasures_t.c.id == hit.erasure_id)
        ).scalar()
    return ErasureResult(contact_id or 0, hit.erasure_id, True, hit.erased_at)


def cli_actor() -> str:
    """``cli:<user>``: who ran the command."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name (a container without passwd entry)
        user = "unknown"
    return f"cli:{user}"


class _Tally:
    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, table: str, what: str, result: Any) -> None:
        n = result if isinstance(result, int) else int(getattr(result, "rowcount", 0) or 0)
        if n > 0:
            slot = self.counts.setdefault(table, {})
            slot[what] = slot.get(what, 0) + n

    @property
    def changed(self) -> bool:
        return any(
            n for table in self.counts.values() for what, n in table.items() if what != "kept"
        )


def _strip_query(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def erase_contact(
    db: Engine,
    contact_id: int,
    *,
    actor: str,
    reason: str | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> ErasureResult:
    """Erase the contact (article 17) in one transaction; see the module's docstring."""
    settings = settings or get_settings()
    now = now or utcnow()
    tally = _Tally()
    with db.begin() as conn:
        query = select(contacts_t).where(contacts_t.c.id == contact_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()  # two erasures of one contact run one after other
        contact = conn.execute(query).mappings().one_or_none()
        if contact is None:
            raise ContactNotFound(contact_id)
        identity = Identity(contact["external_id"], contact["email"], contact["phone"])
        # enrollments before messages: a tick that holds this contact's enrollment commits
        # its new message first, and the messages statement below then sees it
        _erase_enrollments(conn, contact_id, now, tally)
        _erase_messages(conn, contact, now, tally, settings)
        _erase_events_and_orders(conn, contact_id, tally)
        for table in (
            consents_t,
            changes_t,
            memberships_t,
            queued_t,
            topics_t,
            optins_t,
            test_sends_t,
        ):
            tally.add(
                table.name,
                "deleted",
                conn.execute(delete(table).where(table.c.contact_id == contact_id)),
            )
        tally.add(
            "suppressions",
            "deleted",
            conn.execute(
                delete(suppressions_t).where(_address_match(suppressions_t.c.address, contact))
            ),
        )
        for table in (assignments_t, conversions_t):
            kept = conn.execute(select(table.c.id).where(table.c.contact_id == contact_id)).all()
            tally.add(table.name, "kept", len(kept))
        tally.add(
            "attributions",
            "kept",
            len(
                conn.execute(
                    select(attributions_t.c.id)
                    .join(conversions_t, conversions_t.c.id == attributions_t.c.conversion_id)
                    .where(conversions_t.c.contact_id == contact_id)
                ).all()
            ),
        )
        personal = (
            "external_id",
            "email",
            "phone",
            "first_name",
            "last_name",
            "locale",
            "timezone",
            "churn_risk",
            "clv_90d",
            "rfm_segment",
            "scores_model_version",
            "scored_at",
        )
        if (
            contact["erased_at"] is None
            or any(contact[f] is not None for f in personal)
            or (contact["attributes"])
        ):
            conn.execute(
                update(contacts_t)
                .where(contacts_t.c.id == contact_id)
                .values(
                    **dict.fromkeys(personal),
                    attributes={},
                    erased_at=contact["erased_at"] or now,
                    updated_at=now,
                )
            )
            tally.add("contacts", "anonymised", 1)
        tally.add(  # after the update above: the history triggers record its change too
            history_t.name,
            "deleted",
            conn.execute(delete(history_t).where(history_t.c.contact_id == contact_id)),
        )
        first = conn.execute(
            select(erasures_t.c.id, erasures_t.c.erased_at)
            .where(erasures_t.c.contact_id == contact_id)
            .order_by(erasures_t.c.id)
            .limit(1)
        ).first()
        if not tally.changed and first is not None:
            return ErasureResult(contact_id, first.id, True, first.erased_at, tally.counts)
        erasure_id = conn.execute(
            insert(erasures_t)
            .values(
                contact_id=contact_id,
                erased_at=now,
                actor=actor[:255],
                reason=reason[:255] if reason else None,
                counts={},
            )
            .returning(erasures_t.c.id)
        ).scalar_one()
        tally.add(
            "erasure_suppressions",
            "kept",
            suppress_identity(conn, identity, erasure_id=erasure_id, now=now, settings=settings),
        )
        conn.execute(
            update(erasures_t).where(erasures_t.c.id == erasure_id).values(counts=tally.counts)
        )
    return ErasureResult(contact_id, erasure_id, False, now, tally.counts)


def _erase_enrollments(conn: Connection, contact_id: int, now: datetime, tally: _Tally) -> None:
    e = enrollments_t
    tally.add(
        "enrollments",
        "exited",
        conn.execute(
            update(e)
            .where(e.c.contact_id == contact_id, e.c.status == "active")
            .values(
                status="exited", exit_reason=ERASED, exited_at=now, next_due_at=None, updated_at=now
            )
        ),
    )
    tally.add(
        "enrollments",
        "anonymised",
        conn.execute(
            update(e)
            .where(e.c.contact_id == contact_id, ~e.c.entry_key.startswith("erased:"))
            .values(context={}, entry_key=literal("erased:") + cast(e.c.id, String))
        ),
    )


def _erase_messages(
    conn: Connection,
    contact: Any,
    now: datetime,
    tally: _Tally,
    settings: Settings,
) -> None:
    m = messages_t
    contact_id = contact["id"]
    # Never sent: queued, or claimed and not yet handed to a provider. Taking the claim token
    # away makes the claiming worker's fence refuse them (journeys/dispatch.py).
    tally.add(
        "messages",
        "held",
        conn.execute(
            update(m)
            .where(
                m.c.contact_id == contact_id,
                or_(
                    m.c.status == MessageStatus.QUEUED.value,
                    and_(m.c.status == MessageStatus.IN_FLIGHT.value, m.c.handed_at.is_(None)),
                ),
            )
            .values(
                status=MessageStatus.HELD.value,
                error=ERASED_ERROR,
                claim_token=None,
                lease_until=None,
                next_attempt_at=None,
                updated_at=now,
            )
        ),
    )
    fresh = list(
        conn.execute(
            select(m.c.id).where(m.c.contact_id == contact_id, m.c.erased_at.is_(None))
        ).scalars()
    )
    if fresh:
        me = message_events_t
        tally.add(
            "message_events",
            "anonymised",
            conn.execute(update(me).where(me.c.message_id.in_(fresh)).values(payload={})),
        )
        links = conn.execute(
            select(me.c.id, me.c.url).where(me.c.message_id.in_(fresh), me.c.url.is_not(None))
        ).all()
        update_rows(
            conn,
            me,
            [{"id": i, "url": _strip_query(u)} for i, u in links if _strip_query(u) != u],
        )
        tally.add(
            "messages",
            "anonymised",
            conn.execute(
                update(m)
                .where(m.c.id.in_(fresh))
                .values(
                    to_address="",
                    subject=None,
                    error=None,
                    meta={},
                    erased_at=now,
                    updated_at=now,
                )
            ),
        )
        # the held ones say why (the update above cleared every error)
        conn.execute(
            update(m)
            .where(m.c.id.in_(fresh), m.c.status == MessageStatus.HELD.value)
            .values(error=ERASED_ERROR)
        )
        removed = 0
        folder = Path(settings.outbox_dir)
        if folder.is_dir():
            for message_id in fresh:
                for suffix in (".eml", ".json"):
                    path = folder / f"{message_id}{suffix}"
                    if path.exists():
                        path.unlink()
                        removed += 1
        tally.add("messages", "outbox_files_deleted", removed)
    tally.add(
        "message_events",
        "deleted",
        conn.execute(delete(message_events_t).where(_orphan_events_of(contact))),
    )


def _erase_events_and_orders(conn: Connection, contact_id: int, tally: _Tally) -> None:
    c = conversions_t
    for table, link, values in (
        (
            events_t,
            c.c.event_id,
            {
                "properties": {},
                "source": ERASED,
                "idempotency_key": literal("erased:") + cast(events_t.c.id, String),
            },
        ),
        (
            orders_t,
            c.c.order_id,
            {"attributes": {}, "order_id": literal("erased:") + cast(orders_t.c.id, String)},
        ),
    ):
        counted = select(link).where(c.c.contact_id == contact_id, link.is_not(None))
        tally.add(
            table.name,
            "deleted",
            conn.execute(
                delete(table).where(table.c.contact_id == contact_id, table.c.id.not_in(counted))
            ),
        )
        marker = table.c.source if table is events_t else table.c.order_id
        tally.add(
            table.name,
            "anonymised",
            conn.execute(
                update(table)
                .where(
                    table.c.contact_id == contact_id,
                    ~(marker.startswith("erased:") | (marker == ERASED)),
                )
                .values(values)
            ),
        )

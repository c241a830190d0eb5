"""SQLAlchemy 2 typed models of the CRM store.

One ``MetaData`` with a naming convention, so every constraint and index has a stable name that
Alembic migrations can refer to on SQLite and PostgreSQL alike. Timestamps are UTC and aware
(``UTCDateTime``); JSON is JSONB on PostgreSQL. Vocabularies (channels, statuses) are plain
strings checked in Python by the ``StrEnum`` classes below, so adding a value needs no migration.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings.crm.types import IdType, JSONType, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class Purpose(StrEnum):
    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class ConsentStatus(StrEnum):
    GRANTED = "granted"
    REVOKED = "revoked"
    PENDING = "pending"  # double opt-in: asked, not yet confirmed; never permits a send


class OptInStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    EXPIRED = "expired"


class MessageStatus(StrEnum):
    QUEUED = "queued"  # recorded, not yet handed to a provider
    IN_FLIGHT = "in_flight"  # claimed by a dispatcher (handed over once handed_at is set)
    SENT = "sent"  # provider accepted it
    DELIVERED = "delivered"
    FAILED = "failed"  # permanent error, nothing more will happen
    BOUNCED = "bounced"
    HELD = "held"  # stopped by policy (consent, suppression, cap), recorded for reporting


def _id() -> Mapped[int]:
    return mapped_column(IdType, primary_key=True, autoincrement=True)


def _contact_fk(*, nullable: bool = False, index: bool = True) -> Mapped[Any]:
    return mapped_column(
        IdType, ForeignKey("contacts.id", ondelete="CASCADE"), nullable=nullable, index=index
    )


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = _id()
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(20), index=True)  # E.164
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))  # IANA name
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Scores written by segments/ml (usable in segment rules); NULL until first scored.
    churn_risk: Mapped[float | None] = mapped_column(Float)
    clv_90d: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    rfm_segment: Mapped[str | None] = mapped_column(String(32))
    scores_model_version: Mapped[str | None] = mapped_column(String(64))
    scored_at: Mapped[datetime | None]
    # set by an erasure (crm/erasure.py): the row stays, anonymous, so counts still add up;
    # an erased contact is in no segment, enters no journey and is sent nothing
    erased_at: Mapped[datetime | None]


class Consent(Base):
    """The current consent of a contact per channel and purpose (one row each)."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("contact_id", "channel", "purpose"),)

    id: Mapped[int] = _id()
    contact_id: Mapped[int] = _contact_fk(index=False)  # the unique constraint leads with it
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(32), default=Purpose.MARKETING.value)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AttributeChange(Base):
    """The history of contact attributes: one row per top-level key each time its value
    changes, with the new value (SQL NULL: the key was removed) and when. Written by database
    triggers on ``contacts`` (migration 0013), so every writer is covered; segment rules read it
    with ``has_been``. Append-only. ``contact_id`` has no foreign key: only the triggers write
    it, from the contact row being written, and a trigger deletes it with the contact
    (migration 0018, ``tidings.crm.history``).
    """

    __tablename__ = "attribute_changes"
    __table_args__ = (Index(None, "contact_id", "key", "changed_at"),)

    id: Mapped[int] = _id()
    contact_id: Mapped[int] = mapped_column(IdType, index=False)
    key: Mapped[str] = mapped_column(Text)
    value: Mapped[Any | None] = mapped_column(JSONType)
    changed_at: Mapped[datetime]


class ConsentChange(Base):
    """The audit trail: every change of consent, who or what made it, and when. Append-only."""

    __tablename__ = "consent_changes"
    __table_args__ = (Index(None, "contact_id", "occurred_at"),)

    id: Mapped[int] = _id()
    contact_id: Mapped[int] = mapped_column(IdType, ForeignKey("contacts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    previous_status: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(255))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # a subscription topic (channels/topics.yaml) this change is about; NULL: the base consent
    topic: Mapped[str | None] = mapped_column(String(64))


class TopicSubscription(Base):
    """A contact's own choice for one topic on one channel (``granted`` or ``revoked``).

    No row: the topic's default applies (``opt-out`` topics count as chosen, ``opt-in`` ones
    not). A topic only narrows the base consent (channel, marketing): see crm/topics.py.
    """

    __tablename__ = "topic_subscriptions"
    __table_args__ = (UniqueConstraint("contact_id", "channel", "topic"),)

    id: Mapped[int] = _id()
    contact_id: Mapped[int] = _contact_fk(index=False)  # the unique constraint leads with it
    channel: Mapped[str] = mapped_column(String(16))
    topic: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OptInRequest(Base):
    """A double opt-in: consent asked for (status ``pending`` in consents) and the
    confirmation email sent; confirmed through its signed link before ``expires_at``."""

    __tablename__ = "optin_requests"

    id: Mapped[int] = _id()
    contact_id: Mapped[int] = _contact_fk()
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=OptInStatus.PENDING.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    message_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("messages.id", ondelete="SET NULL")
    )
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Suppression(Base):
    """An address that must not receive messages on a channel (bounce, complaint, STOP, manual)."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = _id()
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index(None, "contact_id", "name", "occurred_at"),  # one contact's events (segments)
        Index(None, "name", "occurred_at", "contact_id"),  # who did X in a window, index-only
    )

    id: Mapped[int] = _id()
    contact_id: Mapped[int] = mapped_column(IdType, ForeignKey("contacts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)


class Order(Base):
    __tablename__ = "orders"
    # One contact's orders with what RFM segment rules read, index-only on PostgreSQL.
    __table_args__ = (
        Index(None, "contact_id", "placed_at", postgresql_include=["total", "status"]),
    )

    id: Mapped[int] = _id()
    order_id: Mapped[str] = mapped_column(String(255), unique=True)  # the shop's own id
    contact_id: Mapped[int] = mapped_column(IdType, ForeignKey("contacts.id", ondelete="CASCADE"))
    total: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32))
    placed_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Journey(Base):
    """One version of a journey definition; a new version hash is a new row."""

    __tablename__ = "journeys"
    __table_args__ = (UniqueConstraint("name", "version_hash"),)

    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(String(200), index=True)
    version_hash: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("journey_id", "contact_id", "entry_key"),
        # the tick's claim (``status = 'active' ORDER BY next_due_at, id LIMIT n FOR UPDATE
        # SKIP LOCKED``) reads it in order and stops after n rows; without ``id`` PostgreSQL
        # sorted every due row on every tick (migration 0019)
        Index(None, "status", "next_due_at", "id"),
    )

    id: Mapped[int] = _id()
    journey_id: Mapped[int] = mapped_column(IdType, ForeignKey("journeys.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = _contact_fk()
    # What made this entry unique: "once", a trigger event's key, or a re-entry period.
    entry_key: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="active")
    step_id: Mapped[str | None] = mapped_column(String(200))
    next_due_at: Mapped[datetime | None]
    entered_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    exited_at: Mapped[datetime | None]
    exit_reason: Mapped[str | None] = mapped_column(String(64))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)


ACTIVE_MESSAGES = "status IN ('queued', 'in_flight')"


class Message(Base):
    """The outbox: one row per message, committed before the provider is called."""

    __tablename__ = "messages"
    # Each index is written on every UPDATE that changes an indexed column (migration 0014):
    # the active rows only for the claim and reconcile, provider ids only once there is one.
    __table_args__ = (
        Index(
            "ix_messages_active",
            "status",
            "id",
            postgresql_where=text(ACTIVE_MESSAGES),
            sqlite_where=text(ACTIVE_MESSAGES),
        ),
        Index(None, "contact_id", "created_at"),  # frequency caps
        Index(
            "ix_messages_provider_message_id",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
            sqlite_where=text("provider_message_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = _id()
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    # no index of its own: (contact_id, created_at) serves every lookup by contact, and each
    # index is one more write on every status change of every message
    contact_id: Mapped[int] = _contact_fk(index=False)
    journey_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("journeys.id", ondelete="SET NULL")
    )
    enrollment_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("enrollments.id", ondelete="SET NULL"), index=True
    )
    step_id: Mapped[str | None] = mapped_column(String(200))
    variant: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(32), default=Purpose.MARKETING.value)
    provider: Mapped[str | None] = mapped_column(String(32))
    template: Mapped[str | None] = mapped_column(String(255))
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    # the locale of the template variant it was rendered from (set at the hand-over, 0012)
    locale: Mapped[str | None] = mapped_column(String(35))
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.QUEUED.value)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]  # a retryable failure: not before this time
    # set just before the provider call; NULL while in flight = claimed, never handed over
    handed_at: Mapped[datetime | None]
    # the claim that owns the row while in flight, and until when (renewed by its heartbeat):
    # reconcile touches only expired leases; a hand-over needs the token (docs/journeys.md)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # the contact was erased: what arrives later for this message (a send result, a webhook)
    # is stored without its personal parts (crm/erasure.py)
    erased_at: Mapped[datetime | None]


class TestSend(Base):
    """A test or seed copy of a journey step (``tidings journey test-send``, ``seeds:``).

    Kept apart from ``messages`` on purpose: reports, frequency caps, consent, enrollments and
    the outbox's exactly-once machinery never see it. Its tracked links carry the id
    ``test-<id>``: their hits belong to no message, and the unsubscribe page refuses it.
    """

    __tablename__ = "test_sends"
    __test__ = False  # not a pytest test class, despite its name
    __table_args__ = (Index(None, "status", "created_at"),)

    id: Mapped[int] = _id()
    kind: Mapped[str] = mapped_column(String(8))  # test | seed
    # seed copies: one per (journey version, step, broadcast run, variant, address)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    journey: Mapped[str] = mapped_column(String(200))
    journey_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("journeys.id", ondelete="SET NULL")
    )
    step_id: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(255))
    # the real contact it was rendered for (NULL: a sample contact, see ``detail``)
    contact_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    locale: Mapped[str | None] = mapped_column(String(35))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|sending|sent|failed
    claim_token: Mapped[str | None] = mapped_column(String(32))
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MessageEvent(Base):
    """What a provider (or our tracking endpoints) told us happened to a message."""

    __tablename__ = "message_events"
    __table_args__ = (
        UniqueConstraint("provider", "provider_event_id"),
        # machine included: per-message engagement flags by an index-only scan (0009)
        Index(None, "message_id", "type", "machine"),
    )

    id: Mapped[int] = _id()
    message_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("messages.id", ondelete="CASCADE")
    )
    provider: Mapped[str] = mapped_column(String(32))
    provider_event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    machine: Mapped[bool] = mapped_column(Boolean, default=False)
    url: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    journey_name: Mapped[str | None] = mapped_column(String(200))
    step_id: Mapped[str | None] = mapped_column(String(200))
    variants: Mapped[dict[str, Any]]  # {"A": {"weight": 50}, ...}
    holdout_percent: Mapped[float] = mapped_column(Float, default=0.0)
    # running; decided (by the experiment's rule); fallback (an auto-winner's fallback rule)
    status: Mapped[str] = mapped_column(String(16), default="running")
    winner: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("experiment_id", "contact_id"),)

    id: Mapped[int] = _id()
    experiment_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("experiments.id", ondelete="CASCADE")
    )
    contact_id: Mapped[int] = _contact_fk()
    variant: Mapped[str] = mapped_column(String(64))  # "holdout" for the control group
    assigned_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversion(Base):
    __tablename__ = "conversions"
    __table_args__ = (Index(None, "contact_id", "occurred_at"),)

    id: Mapped[int] = _id()
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    contact_id: Mapped[int] = mapped_column(IdType, ForeignKey("contacts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # "order" or "event"
    goal: Mapped[str | None] = mapped_column(String(200))
    order_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("orders.id", ondelete="CASCADE")
    )
    event_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("events.id", ondelete="CASCADE")
    )
    value: Mapped[Decimal] = mapped_column(Numeric(14, 2), default=Decimal(0))
    currency: Mapped[str | None] = mapped_column(String(3))
    occurred_at: Mapped[datetime]
    # what earned it: the enrollment (and its journey version), the variant the contact was
    # assigned ("holdout" / "control" included), and the last message sent before it
    enrollment_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("enrollments.id", ondelete="SET NULL"), index=True
    )
    journey_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("journeys.id", ondelete="SET NULL"), index=True
    )
    variant: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("messages.id", ondelete="SET NULL")
    )


class Attribution(Base):
    __tablename__ = "attributions"
    __table_args__ = (UniqueConstraint("conversion_id", "message_id", "model"),)

    id: Mapped[int] = _id()
    conversion_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("conversions.id", ondelete="CASCADE")
    )
    message_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(32))  # last_touch, first_touch, linear, ...
    weight: Mapped[float] = mapped_column(Float)
    value: Mapped[Decimal] = mapped_column(Numeric(14, 4))


class SegmentMembership(Base):
    """A contact's stay in a segment: entered_at, and exited_at once it left (NULL while in).

    At most one open stay per (segment, contact): the partial unique index is both the guard
    and the index for "current members of segment S". A re-entry is a new row.
    """

    __tablename__ = "segment_memberships"
    __table_args__ = (
        Index(
            "uq_segment_memberships_open",
            "segment",
            "contact_id",
            unique=True,
            sqlite_where=text("exited_at IS NULL"),
            postgresql_where=text("exited_at IS NULL"),
        ),
        Index(None, "segment", "entered_at"),
    )

    id: Mapped[int] = _id()
    segment: Mapped[str] = mapped_column(String(200))
    contact_id: Mapped[int] = _contact_fk()
    entered_at: Mapped[datetime] = mapped_column(default=utcnow)
    exited_at: Mapped[datetime | None]


class SegmentChange(Base):
    """A change to a contact that live segments may read, waiting for the live loop
    (``segments.live``): written in the transaction of the write that made it, deleted in the
    transaction that evaluates it. ``change``: ``segments.inputs.Change`` as JSON."""

    __tablename__ = "segment_changes"

    id: Mapped[int] = _id()
    contact_id: Mapped[int] = mapped_column(IdType)  # no foreign key: a queue, kept cheap
    change: Mapped[dict[str, Any]] = mapped_column()
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A key for the event API (web/): only its SHA-256 is stored; ``prefix`` finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = _id()
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class IdempotentRequest(Base):
    """A response remembered for an ``Idempotency-Key`` (per API key), replayed on a retry."""

    __tablename__ = "idempotent_requests"
    __table_args__ = (UniqueConstraint("api_key_id", "key"),)

    id: Mapped[int] = _id()
    api_key_id: Mapped[int] = mapped_column(IdType, ForeignKey("api_keys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Erasure(Base):
    """The log of erasures (GDPR article 17): when, by whom, and how many rows of each table
    were deleted or anonymised. Holds no personal data itself."""

    __tablename__ = "erasures"

    id: Mapped[int] = _id()
    # the anonymous row left in contacts (NULL if it is ever deleted)
    contact_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))  # "api:<key name> (<prefix>)", "cli:<user>"
    reason: Mapped[str | None] = mapped_column(String(255))
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {table: {deleted, anonymised}}


class ErasureSuppression(Base):
    """A keyed hash (HMAC-SHA256 with TIDINGS_SUPPRESSION_KEY) of an erased person's
    normalised email, phone or external id: an import or API write naming it is refused until
    the person consents again (``released_at``). ``kind`` is part of the hashed message."""

    __tablename__ = "erasure_suppressions"

    id: Mapped[int] = _id()
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # email | phone | external_id
    key_id: Mapped[str] = mapped_column(String(16))  # which key made the digest
    erasure_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("erasures.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None]
    released_by: Mapped[str | None] = mapped_column(String(255))

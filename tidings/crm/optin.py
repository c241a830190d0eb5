"""Double opt-in: a marketing email grant from some sources counts only once it is confirmed.

``channels/email.yaml`` (or ``TIDINGS_DOUBLE_OPT_IN_SOURCES``) names the consent sources that
need confirmation, as shell patterns (``api:*`` matches every API key's ``api:<name>``,
``import:*`` every import). A grant of (email, marketing) from such a source, for a contact
whose consent is not already ``granted``:

1. sets the consent to ``pending`` (audited with the source and the request id) -- a pending
   consent never permits a marketing send;
2. stores an ``optin_requests`` row that expires after ``TIDINGS_DOUBLE_OPT_IN_EXPIRES``;
3. queues the confirmation email in the outbox (transactional, template
   ``TIDINGS_DOUBLE_OPT_IN_TEMPLATE``, idempotency key ``optin:<request id>``), whose
   ``{{ confirm_url }}`` is ``{public_url}/confirm/<token>``, signed like the unsubscribe link.

Confirming (``POST /confirm/<token>``, see web/optin.py) before the expiry sets the consent to
``granted`` (audited, source ``optin:confirmed``) and posts the event ``consent.confirmed``, which
a journey can be triggered by. A request already open and unexpired is not sent again.

>>> policy = OptInPolicy(("api:*",), "confirm_subscription", 86400.0, "https://x", "k")
>>> policy.requires("api:shop", "email", "marketing"), policy.requires("import:a.csv", "email",
...     "marketing")
(True, False)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update

from tidings.crm.consent import (
    ConsentWish,
    set_consents,
    stored_consents,
    suppressions_t,
)
from tidings.crm.models import (
    Channel,
    ConsentStatus,
    Contact,
    Message,
    MessageStatus,
    OptInRequest,
    OptInStatus,
    Purpose,
)
from tidings.crm.types import utcnow
from tidings.templates.tracking import sign_token, tracking_url

requests_t: Table = OptInRequest.__table__  # type: ignore[assignment]
messages_t: Table = Message.__table__  # type: ignore[assignment]
contacts_t: Table = Contact.__table__  # type: ignore[assignment]

CONFIRMED_EVENT = "consent.confirmed"
CONFIRMED_SOURCE = "optin:confirmed"


@dataclass(frozen=True)
class OptInPolicy:
    sources: tuple[str, ...]
    template: str
    expires_seconds: float
    public_url: str
    secret: str

    @classmethod
    def from_settings(cls, settings: Any) -> OptInPolicy | None:
        """The project's policy, or None when no source needs confirmation."""
        from tidings.segments.rules import parse_duration
        from tidings.templates.tracking import signing_key

        if not settings.double_opt_in_sources:
            return None
        return cls(
            tuple(settings.double_opt_in_sources),
            settings.double_opt_in_template,
            parse_duration(settings.double_opt_in_expires),
            settings.public_url,
            signing_key(settings),
        )

    def requires(self, source: str, channel: str, purpose: str) -> bool:
        return (
            channel == Channel.EMAIL.value
            and purpose == Purpose.MARKETING.value
            and any(fnmatchcase(source, pattern) for pattern in self.sources)
        )

    def confirm_url(self, request_id: int) -> str:
        token = sign_token("v", str(request_id), secret=self.secret)
        return tracking_url(self.public_url, "v", token)


@dataclass
class ConsentOutcome:
    changed: set[int] = field(default_factory=set)
    """Contacts whose consent changed (pending counts)."""
    requested: list[int] = field(default_factory=list)
    """Opt-in requests created."""
    messages: list[int] = field(default_factory=list)
    """Confirmation emails queued in the outbox (send them after the commit)."""


def apply_consents(
    conn: Connection,
    wishes: Iterable[ConsentWish],
    *,
    source: str,
    policy: OptInPolicy | None,
    now: datetime | None = None,
    fresh: Collection[int] = (),
) -> ConsentOutcome:
    """``set_consents``, except that a grant the policy requires to be confirmed becomes
    ``pending`` with an opt-in request and a queued confirmation email. ``fresh``: contacts
    created in this transaction (they have no consent to look up)."""
    now = now or utcnow()
    wishes = list(wishes)
    outcome = ConsentOutcome()
    asked = [
        w
        for w in wishes
        if policy is not None
        and w.status == ConsentStatus.GRANTED.value
        and policy.requires(source, w.channel, w.purpose)
    ]
    direct = [w for w in wishes if w not in asked]
    if asked:
        assert policy is not None
        pending = _request(conn, asked, source=source, policy=policy, now=now, into=outcome)
        direct += pending
    outcome.changed = set_consents(conn, direct, source=source, now=now, fresh=fresh)
    return outcome


def _request(
    conn: Connection,
    asked: list[ConsentWish],
    *,
    source: str,
    policy: OptInPolicy,
    now: datetime,
    into: ConsentOutcome,
) -> list[ConsentWish]:
    ids = {w.contact_id for w in asked}
    current = stored_consents(conn, ids)
    open_requests = {
        (r.contact_id, r.channel, r.purpose)
        for r in conn.execute(
            select(requests_t.c.contact_id, requests_t.c.channel, requests_t.c.purpose).where(
                requests_t.c.contact_id.in_(ids),
                requests_t.c.status == OptInStatus.PENDING.value,
                requests_t.c.expires_at > now,
            )
        )
    }
    addresses = {
        r.id: r.email
        for r in conn.execute(
            select(contacts_t.c.id, contacts_t.c.email).where(contacts_t.c.id.in_(ids))
        )
    }
    suppressed = {
        r.address
        for r in conn.execute(
            select(suppressions_t.c.address).where(
                suppressions_t.c.channel == Channel.EMAIL.value,
                suppressions_t.c.address.in_({a for a in addresses.values() if a}),
            )
        )
    }
    pending: list[ConsentWish] = []
    expires = now + timedelta(seconds=policy.expires_seconds)
    for wish in asked:
        key = (wish.contact_id, wish.channel, wish.purpose)
        if current.get(key) == ConsentStatus.GRANTED.value or key in open_requests:
            continue  # nothing to confirm, or a confirmation is already on its way
        open_requests.add(key)
        request_id = conn.execute(
            insert(requests_t)
            .values(
                contact_id=wish.contact_id,
                channel=wish.channel,
                purpose=wish.purpose,
                source=source,
                status=OptInStatus.PENDING.value,
                created_at=now,
                expires_at=expires,
                detail={},
            )
            .returning(requests_t.c.id)
        ).scalar_one()
        address = addresses.get(wish.contact_id) or ""
        held = "no_address" if not address else "suppressed" if address in suppressed else None
        message_id = conn.execute(
            insert(messages_t)
            .values(
                idempotency_key=f"optin:{request_id}",
                contact_id=wish.contact_id,
                channel=Channel.EMAIL.value,
                purpose=Purpose.TRANSACTIONAL.value,
                template=policy.template,
                to_address=address,
                status=MessageStatus.HELD.value if held else MessageStatus.QUEUED.value,
                error=held,
                attempts=0,
                created_at=now,
                updated_at=now,
                meta={
                    "optin_request": request_id,
                    "context": {
                        "confirm_url": policy.confirm_url(request_id),
                        "confirm_expires_at": expires.isoformat(),
                    },
                },
            )
            .returning(messages_t.c.id)
        ).scalar_one()
        conn.execute(
            update(requests_t).where(requests_t.c.id == request_id).values(message_id=message_id)
        )
        into.requested.append(request_id)
        if not held:
            into.messages.append(message_id)
        pending.append(
            ConsentWish(
                wish.contact_id,
                wish.channel,
                wish.purpose,
                ConsentStatus.PENDING.value,
                {**wish.detail, "optin_request": request_id},
            )
        )
    return pending


@dataclass(frozen=True)
class Confirmation:
    status: str  # confirmed | already | expired | unknown
    contact_id: int | None = None
    request_id: int | None = None
    channel: str | None = None
    purpose: str | None = None
    source: str | None = None


def confirm(conn: Connection, request_id: int, *, now: datetime | None = None) -> Confirmation:
    """Confirm an opt-in request: ``granted`` (audited) unless it expired. Idempotent: a
    second confirmation of the same request changes nothing and says ``already``."""
    now = now or utcnow()
    query = select(requests_t).where(requests_t.c.id == request_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        return Confirmation("unknown")
    found = dict(
        contact_id=row["contact_id"],
        request_id=request_id,
        channel=row["channel"],
        purpose=row["purpose"],
        source=row["source"],
    )
    if row["status"] == OptInStatus.CONFIRMED.value:
        return Confirmation("already", **found)
    if row["status"] == OptInStatus.EXPIRED.value or row["expires_at"] <= now:
        if row["status"] != OptInStatus.EXPIRED.value:
            conn.execute(
                update(requests_t)
                .where(requests_t.c.id == request_id)
                .values(status=OptInStatus.EXPIRED.value)
            )
        return Confirmation("expired", **found)
    conn.execute(
        update(requests_t)
        .where(requests_t.c.id == request_id)
        .values(status=OptInStatus.CONFIRMED.value, confirmed_at=now)
    )
    set_consents(
        conn,
        [
            ConsentWish(
                row["contact_id"],
                row["channel"],
                row["purpose"],
                ConsentStatus.GRANTED.value,
                {"optin_request": request_id, "requested_by": row["source"]},
            )
        ],
        source=CONFIRMED_SOURCE,
        now=now,
    )
    return Confirmation("confirmed", **found)


def queued_confirmations(conn: Connection, *, now: datetime, limit: int = 10_000) -> list[int]:
    """Confirmation emails still queued (a retryable failure, or queued by an import whose
    command did not send them): the tick sends them."""
    return list(
        conn.scalars(
            select(messages_t.c.id)
            .where(
                messages_t.c.status == MessageStatus.QUEUED.value,
                messages_t.c.journey_id.is_(None),
                messages_t.c.idempotency_key.like("optin:%"),
                (messages_t.c.next_attempt_at.is_(None)) | (messages_t.c.next_attempt_at <= now),
            )
            .order_by(messages_t.c.id)
            .limit(limit)
        )
    )

"""The policy gate before every send: consent, suppression, address, frequency cap, quiet hours.

Decided for a whole batch with one query per kind (never a query per contact):

>>> decisions = gate(session=session, candidates=batch, rules=rules, now=now)  # doctest: +SKIP

Rules, in order (the first that applies decides):

1. no address for the channel -> ``hold: no_address``
2. address suppressed on the channel (bounce, complaint, STOP, 21610) -> ``hold: suppressed``
3. consent: a marketing send needs the contact's consent for (channel, marketing) to be
   ``granted``; a transactional send (an order update) is refused only when consent for
   (channel, transactional) is ``revoked`` -- an SMS STOP revokes both purposes
   -> ``hold: no_consent``; a ``pending`` consent (double opt-in not yet confirmed) is not
   ``granted``
3b. topic (a marketing send of a journey with ``topic:``): the contact is subscribed to the
   topic on the channel -- their own choice, else the topic's default (crm/topics.py)
   -> ``hold: topic_unsubscribed``
4. frequency cap (marketing only): at most ``max`` marketing messages per contact in ``per``
   seconds, counting messages already recorded and those decided earlier in the same batch
   -> ``hold: frequency_cap``
5. quiet hours (marketing only), in the contact's timezone -> ``defer`` to the end of the
   quiet window: the send is postponed, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidings.crm.db import among
from tidings.crm.models import Consent as ConsentRow
from tidings.crm.models import ConsentStatus, Message, MessageStatus, Purpose, Suppression
from tidings.crm.topics import Topics, choices, subscribed
from tidings.journeys.state import zone_of

COUNTED = (
    MessageStatus.QUEUED.value,
    MessageStatus.IN_FLIGHT.value,
    MessageStatus.SENT.value,
    MessageStatus.DELIVERED.value,
)


@dataclass(frozen=True, slots=True)
class Candidate:
    key: int  # whatever the caller uses to find the decision again (the enrollment id)
    contact_id: int
    channel: Literal["email", "sms"]
    purpose: Literal["marketing", "transactional"]
    address: str | None
    timezone: str | None
    topic: str | None = None  # marketing of a subscription topic (crm/topics.py)


@dataclass(frozen=True, slots=True)
class Rules:
    cap_max: int | None  # None: no cap
    cap_seconds: float
    quiet_start: time | None  # None: no quiet hours
    quiet_end: time | None
    default_timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["send", "hold", "defer"]
    reason: str | None = None
    until: datetime | None = None


SEND = Decision("send")


def quiet_until(now: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """When the quiet window that ``now`` falls in ends (UTC), or None outside it.

    ``start`` > ``end`` wraps midnight (21:00-08:00). Local times are built with the zone's
    rules, so a daylight saving change inside the window is handled.
    """
    local = now.astimezone(zone)
    clock = local.time()
    if start == end:
        return None
    if start < end:
        inside = start <= clock < end
        end_day = local.date()
    else:
        inside = clock >= start or clock < end
        end_day = local.date() + timedelta(days=1) if clock >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=zone).astimezone(now.tzinfo)


def gate(
    *,
    session: Session,
    candidates: Sequence[Candidate],
    rules: Rules,
    now: datetime,
    pending: Mapping[int, int] | None = None,
    topics: Topics | None = None,
) -> dict[int, Decision]:
    """Decide each candidate; ``pending`` counts marketing messages per contact decided
    earlier in the same transaction but not yet written; ``topics`` are the project's
    (needed when a candidate names one)."""
    if not candidates:
        return {}
    contact_ids = {c.contact_id for c in candidates}
    channels = {c.channel for c in candidates}
    suppressed = {
        (channel, address)
        for channel, address in session.execute(
            select(Suppression.channel, Suppression.address).where(
                Suppression.channel.in_(channels),
                among(session, Suppression.address, {c.address for c in candidates if c.address}),
            )
        )
    }
    consent = {
        (cid, channel, purpose): status
        for cid, channel, purpose, status in session.execute(
            select(
                ConsentRow.contact_id, ConsentRow.channel, ConsentRow.purpose, ConsentRow.status
            ).where(among(session, ConsentRow.contact_id, contact_ids))
        )
    }
    topical = {c.contact_id for c in candidates if c.topic and c.purpose == "marketing"}
    chosen = choices(session.connection(), topical) if topical else {}
    if topical and topics is None:
        raise ValueError("a candidate names a topic but gate() was given no topics")
    recent: dict[int, int] = {}
    if rules.cap_max is not None and any(c.purpose == "marketing" for c in candidates):
        since = now - timedelta(seconds=rules.cap_seconds)
        rows = session.execute(
            select(Message.contact_id, func.count())
            .where(
                among(session, Message.contact_id, contact_ids),
                Message.purpose == Purpose.MARKETING.value,
                Message.status.in_(COUNTED),
                Message.created_at >= since,
            )
            .group_by(Message.contact_id)
        )
        recent = {cid: int(n) for cid, n in rows}
        for cid, n in (pending or {}).items():
            if cid in contact_ids:
                recent[cid] = recent.get(cid, 0) + n
    decisions: dict[int, Decision] = {}
    for c in candidates:
        topic_ok = True
        if c.topic and c.purpose == "marketing":
            assert topics is not None
            choice = chosen.get((c.contact_id, c.channel, c.topic))
            topic_ok = subscribed(topics.get(c.topic), choice)
        decisions[c.key] = _decide(c, rules, now, suppressed, consent, recent, topic_ok)
        if decisions[c.key] is SEND and c.purpose == "marketing":
            recent[c.contact_id] = recent.get(c.contact_id, 0) + 1
    return decisions


def _decide(
    c: Candidate,
    rules: Rules,
    now: datetime,
    suppressed: set[tuple[str, str]],
    consent: dict[tuple[int, str, str], str],
    recent: dict[int, int],
    topic_ok: bool = True,
) -> Decision:
    if not c.address:
        return Decision("hold", "no_address")
    if (c.channel, c.address) in suppressed:
        return Decision("hold", "suppressed")
    status = consent.get((c.contact_id, c.channel, c.purpose))
    if c.purpose == "transactional":
        return Decision("hold", "no_consent") if status == ConsentStatus.REVOKED.value else SEND
    if status != ConsentStatus.GRANTED.value:
        return Decision("hold", "no_consent")
    if not topic_ok:
        return Decision("hold", "topic_unsubscribed")
    if rules.cap_max is not None and recent.get(c.contact_id, 0) >= rules.cap_max:
        return Decision("hold", "frequency_cap")
    if rules.quiet_start is not None and rules.quiet_end is not None:
        until = quiet_until(
            now, zone_of(c.timezone, rules.default_timezone), rules.quiet_start, rules.quiet_end
        )
        if until is not None:
            return Decision("defer", "quiet_hours", until)
    return SEND

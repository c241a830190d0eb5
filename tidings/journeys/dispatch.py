"""Send what the outbox holds: claim queued messages, render, hand to the channel, record.

The sequence that makes sending exactly-once:

1. the engine commits a ``queued`` message row (unique idempotency key) with the enrollment
   move that made it;
2. ``claim`` takes queued rows (PostgreSQL: ``FOR UPDATE SKIP LOCKED``) and commits them as
   ``in_flight`` with ``handed_at`` empty, a new ``claim_token`` and ``lease_until``, *before*
   any provider call; the worker's heartbeat (``Leases``) renews the lease while it holds them;
3. it renders each (the template version is pinned by content hash; only Jinja runs per
   contact), commits ``handed_at`` *only on rows its token still owns* (a conditional update:
   the fence) and hands exactly those to the channel: a whole batch at once, or, for a channel
   whose provider keeps no record we could ask (``record_each``: SMTP), one message at a time
   (one per connection of the channel's pool),
   each result committed together with the next message's hand-over;
4. it records each result: ``sent`` with the provider's id, ``failed`` with the provider's
   reason, or back to ``queued`` with ``next_attempt_at`` for a retryable error (the last two
   only on rows it still owns).

A crash between 2 and 4 leaves rows ``in_flight``; their lease runs out. Those without
``handed_at`` never reached a provider: ``reconcile`` queues them again. The others are never
resent blindly: ``reconcile`` asks the provider (or the outbox folder) first. With
``record_each`` at most one message per crashed worker (one per connection of its SMTP pool,
``TIDINGS_SMTP_CONNECTIONS``) is in that state. A worker that was
paused past its lease (a slow provider, a GC pause, a frozen VM) finds its token gone at the
fence and sends none of the rows it lost. The protocol and its invariant: docs/journeys.md.

Sending overlaps with preparing: while one batch is with the channel (a sender thread), the
caller claims and renders the next (``Pipeline``); at most two batches are in memory.

>>> dispatcher = Dispatcher(db=db, renderer=renderer, channels={"email": outbox})  # doctest: +SKIP
>>> dispatcher.dispatch()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, and_, or_, select, update
from sqlalchemy.orm import Session

from tidings.channels.base import Channel
from tidings.channels.record import record_results
from tidings.channels.types import Outbound, OutboundEmail, OutboundSms, SendResult
from tidings.config import Settings, get_settings
from tidings.crm.db import among, update_rows
from tidings.crm.erasure import ERASED_ERROR
from tidings.crm.models import Message, MessageStatus
from tidings.crm.types import utcnow
from tidings.errors import ConfigurationError, InputError, PermanentError
from tidings.journeys.state import contacts_t, enrollments_t, messages_t
from tidings.templates.render import CONTACT_FIELDS

# what rendering reads of a message and of its contact (``prepare``)
_MESSAGE_FIELDS = (
    "id",
    "idempotency_key",
    "channel",
    "template",
    "variant",
    "step_id",
    "to_address",
    "meta",
    "erased_at",
)
_CONTACT_FIELDS = (*CONTACT_FIELDS, "attributes")
#: Where the contact's fields start in ``prepare``'s rows (after the message's, its contact's
#: erasure and its enrolment's context).
_CONTACT_AT = len(_MESSAGE_FIELDS) + 2
log = logging.getLogger(__name__)


EXAMPLES = 5  # message ids kept per failure reason (the rest are only counted)


@dataclass
class Problem:
    """Messages that failed (or go back to the queue) for one reason: how many, a few ids."""

    status: str  # failed | retry
    reason: str
    count: int = 0
    message_ids: list[int] = field(default_factory=list)


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retry: int = 0
    render_failed: int = 0
    lost: int = 0  # claimed, then lost with the lease before the hand-over: not sent by us
    by_channel: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    problems: dict[tuple[str, str], Problem] = field(default_factory=dict)

    def note(self, result: SendResult) -> None:
        """Keep the reason of a message that was not accepted (grouped by status and reason)."""
        reason = result.error or "no reason given"
        problem = self.problems.get((result.status, reason))
        if problem is None:
            problem = self.problems[(result.status, reason)] = Problem(result.status, reason)
        problem.count += 1
        if len(problem.message_ids) < EXAMPLES:
            problem.message_ids.append(int(result.message_id))

    def add(self, other: DispatchStats) -> None:
        """Fold ``other`` (another dispatch of the same command) into these."""
        for name in ("claimed", "sent", "failed", "retry", "render_failed", "lost"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for channel, n in other.by_channel.items():
            self.by_channel[channel] += n
        for key, theirs in other.problems.items():
            mine = self.problems.setdefault(key, Problem(theirs.status, theirs.reason))
            mine.count += theirs.count
            mine.message_ids.extend(theirs.message_ids[: EXAMPLES - len(mine.message_ids)])


@dataclass(frozen=True)
class Claim:
    """Messages one worker took (``ids``) under one ``token``: they are its own until handed
    over or until its lease runs out."""

    token: str
    ids: list[int]


@dataclass
class Prepared:
    """A claimed batch, rendered: what goes to each channel, and what failed to render."""

    token: str
    outbound: dict[str, list[Outbound]] = field(default_factory=lambda: defaultdict(list))
    failures: list[SendResult] = field(default_factory=list)


class Leases:
    """The claims this process holds, renewed by a heartbeat thread every third of the lease.

    The thread runs only while something is held. A renewal that fails (the database is away)
    is logged and tried again; if the lease runs out meanwhile, the fence at the hand-over
    keeps this worker from sending what it lost.
    """

    def __init__(self, db: Engine, seconds: float) -> None:
        self.db = db
        self.seconds = seconds
        self._held: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.seconds)

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._held[claim.token] = claim.ids
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._beat, name="lease-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, token: str) -> None:
        with self._lock:
            self._held.pop(token, None)

    def renew(self) -> int:
        """Extend every held lease that is still ours; returns how many rows. One short
        transaction per claim; on PostgreSQL rows another transaction has locked (the worker's
        own hand-over or result, which set the lease themselves) are skipped, not waited for,
        so the heartbeat never takes part in a lock cycle."""
        with self._lock:
            held = list(self._held.items())
        renewed = 0
        for token, ids in held:
            now = utcnow()
            mine = select(messages_t.c.id).where(
                among(self.db, messages_t.c.id, ids),
                messages_t.c.claim_token == token,
                messages_t.c.status == MessageStatus.IN_FLIGHT.value,
            )
            if self.db.dialect.name == "postgresql":
                mine = mine.with_for_update(skip_locked=True)
            with self.db.begin() as conn:
                renewed += conn.execute(
                    update(messages_t)
                    .where(messages_t.c.id.in_(mine.scalar_subquery()))
                    .values(lease_until=self.until(now))
                ).rowcount
        return renewed

    def _beat(self) -> None:
        while True:
            time.sleep(self.seconds / 3)
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
            try:
                self.renew()
            except Exception:  # the database may be away for a moment: try at the next beat
                log.warning("lease heartbeat failed; retrying", exc_info=True)


class Dispatcher:
    def __init__(
        self,
        *,
        db: Engine,
        renderer: Any,
        channels: Mapping[str, Channel[Any]],
        settings: Settings | None = None,
    ) -> None:
        self.db = db
        self.renderer = renderer
        self.channels = channels
        self.settings = settings or get_settings()
        self.leases = Leases(db, self.settings.lease_seconds)
        real = sorted({c.provider for c in channels.values() if c.provider != "outbox"})
        if real and self.settings.secret_key is None:
            raise ConfigurationError(
                f"TIDINGS_SECRET_KEY is not set, and {', '.join(real)} would send real messages "
                "whose tracking and unsubscribe links are signed with the public development "
                "key: set TIDINGS_SECRET_KEY (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`), or send through the outbox channel"
            )

    def claim(
        self,
        *,
        now: datetime,
        limit: int,
        journey_ids: set[int] | None = None,
        only: list[int] | None = None,
    ) -> Claim:
        """Mark up to ``limit`` due queued messages in flight under a new token, leased to this
        worker; committed before any send. The heartbeat keeps the lease until ``release``."""
        token = uuid.uuid4().hex
        with Session(self.db) as session, session.begin():
            query = (
                select(Message.id)
                .where(
                    Message.status == MessageStatus.QUEUED.value,
                    or_(Message.next_attempt_at.is_(None), Message.next_attempt_at <= now),
                )
                .order_by(Message.id)
                .limit(limit)
            )
            if journey_ids is not None:
                query = query.where(Message.journey_id.in_(journey_ids))
            if only is not None:
                query = query.where(Message.id.in_(only))
            if self.db.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(session.scalars(query))
            if ids:
                session.execute(
                    update(messages_t)
                    .where(among(self.db, messages_t.c.id, ids))
                    .values(
                        status=MessageStatus.IN_FLIGHT.value,
                        handed_at=None,
                        claim_token=token,
                        lease_until=self.leases.until(utcnow()),
                        updated_at=now,
                    )
                )
        claim = Claim(token, ids)
        if ids:
            self.leases.hold(claim)
        return claim

    def dispatch(
        self,
        *,
        now: datetime | None = None,
        limit: int = 1000,
        journey_ids: set[int] | None = None,
        only: list[int] | None = None,
    ) -> DispatchStats:
        """Send queued messages in batches of ``limit`` until none is due (or just ``only``)."""
        stats = DispatchStats()
        if only is not None and not only:
            return stats
        with self.pipeline(stats) as pipe:
            while pipe.pump(now=now, limit=limit, journey_ids=journey_ids, only=only) == limit:
                pass
        if only is None:
            self.send_seeds()
        return stats

    def send_seeds(self) -> int:
        """Seed copies the tick queued for broadcast runs (``journeys.testsend``); a failure
        there is logged and never stops the journey's own sends."""
        from tidings.journeys.testsend import send_seed_copies

        try:
            return send_seed_copies(self)
        except Exception:
            log.exception("sending seed copies failed")
            return 0

    @contextmanager
    def pipeline(self, stats: DispatchStats) -> Iterator[Pipeline]:
        """A sender thread for this block; leaving the block waits for the last batch."""
        pipe = Pipeline(self, stats)
        try:
            yield pipe
        finally:
            pipe.close()

    def prepare(self, claim: Claim, stats: DispatchStats) -> Prepared:
        """Load and render claimed messages; a message that cannot be rendered fails."""
        ids = claim.ids
        stats.claimed += len(ids)
        prepared = Prepared(claim.token)
        # plain rows, not ORM objects: building two objects per message cost as much as the
        # query; the renderer reads the contact as a mapping, the message by attribute
        with self.db.connect() as conn:
            rows = conn.execute(
                select(
                    *(messages_t.c[name] for name in _MESSAGE_FIELDS),
                    contacts_t.c.erased_at.label("contact_erased_at"),
                    enrollments_t.c.context,
                    *(contacts_t.c[name].label(f"contact_{name}") for name in _CONTACT_FIELDS),
                )
                .join(contacts_t, contacts_t.c.id == messages_t.c.contact_id)
                .outerjoin(enrollments_t, enrollments_t.c.id == messages_t.c.enrollment_id)
                .where(among(self.db, messages_t.c.id, ids))
                .order_by(messages_t.c.id)
            ).all()
        for message in rows:
            try:
                if message.contact_erased_at is not None or message.erased_at is not None:
                    # (reconcile may queue again a message that was in doubt at the erasure)
                    raise PermanentError(ERASED_ERROR)
                contact = dict(zip(_CONTACT_FIELDS, message[_CONTACT_AT:], strict=True))
                item = self.render(message, contact, message.context or {})
            except (PermanentError, InputError) as exc:
                stats.render_failed += 1
                prepared.failures.append(
                    SendResult(
                        message_id=str(message.id),
                        status="failed",
                        provider="render",
                        channel=message.channel,
                        to=message.to_address,
                        error=self._render_reason(exc),
                        attempts=0,
                    )
                )
                continue
            prepared.outbound[message.channel].append(item)
        return prepared

    def _render_reason(self, error: Exception) -> str:
        """``templates/sms/x.sms.j2:1: UndefinedError: ...``: where, relative to the project."""
        location = getattr(error, "location", None)
        if not location:
            return str(error)
        root = str(self.settings.project_dir).rstrip("/") + "/"
        return f"{str(location).removeprefix(root)}: {getattr(error, 'message', error)}"

    def deliver(self, prepared: Prepared, stats: DispatchStats) -> None:
        """Hand a prepared batch to its channels and record every result; then the claim is
        released (what is left in flight, in doubt, goes to reconcile when the lease ends)."""
        try:
            self._deliver(prepared, stats)
        finally:
            self.leases.release(prepared.token)

    def _deliver(self, prepared: Prepared, stats: DispatchStats) -> None:
        token = prepared.token
        results: list[SendResult] = list(prepared.failures)
        for channel_name, batch in prepared.outbound.items():
            channel = self.channels.get(channel_name)
            if channel is None:
                results += [
                    SendResult.failed(
                        m, provider="none", error=f"no {channel_name} channel configured"
                    )
                    for m in batch
                ]
                continue
            if not channel.record_each:
                owned = self.record([], token=token, handed=batch)
                stats.lost += len(batch) - len(owned)
                stats.by_channel[channel_name] += len(owned)
                results += channel.send_batch(owned) if owned else []
                continue
            # one window at a time (one message per connection of the channel): each window's
            # results are committed with the next window's hand-over
            pending: list[SendResult] = []
            window = max(1, channel.concurrency)
            for start in range(0, len(batch), window):
                items = batch[start : start + window]
                owned = self.record(pending, token=token, handed=items)
                _count(stats, pending)
                pending = []
                stats.lost += len(items) - len(owned)
                if not owned:
                    continue
                stats.by_channel[channel_name] += len(owned)
                pending = list(channel.send_batch(owned))
            self.record(pending, token=token)
            _count(stats, pending)
        self.record(results, token=token)
        _count(stats, results)

    def record(
        self,
        results: Sequence[SendResult],
        *,
        token: str | None = None,
        handed: Sequence[Outbound] = (),
    ) -> list[Outbound]:
        """One transaction: the results (with retry times), and the hand-over of the messages
        about to go to the provider (``handed_at``, the subject and the locale they go with).
        The hand-over is fenced: only rows the claim ``token`` still owns are handed over, and
        only those are returned (the caller sends exactly those)."""
        if not results and not handed:
            return []
        now = utcnow()
        with Session(self.db) as session, session.begin():
            record_results(
                session=session, results=results, now=now, token=token, settings=self.settings
            )
            retry_later = [
                {
                    "id": int(r.message_id),
                    "next_attempt_at": now + timedelta(seconds=r.retry_after or 60.0),
                }
                for r in results
                if r.status == "retry" and not r.in_doubt
            ]
            update_rows(session, messages_t, retry_later)
            if not handed:
                return []
            fence = and_(
                messages_t.c.claim_token == token,
                messages_t.c.status == MessageStatus.IN_FLIGHT.value,
                messages_t.c.lease_until > now,
            )
            rows = [
                {
                    "id": int(m.message_id),
                    "handed_at": now,
                    "lease_until": self.leases.until(now),
                    "subject": m.subject if isinstance(m, OutboundEmail) else None,
                    "locale": m.locale,
                }
                for m in handed
            ]
            if self.db.dialect.name == "postgresql":
                # one statement, one new row version per message: the fenced UPDATE locks and
                # writes exactly the rows still ours, and names them
                owned = {
                    mid
                    for (mid,) in update_rows(
                        session,
                        messages_t,
                        rows,
                        where=lambda _v: fence,
                        returning=(messages_t.c.id,),
                    )
                }
            else:  # (SQLite: one writer at a time; what the fence lets through, then those)
                query = select(messages_t.c.id).where(
                    among(self.db, messages_t.c.id, [r["id"] for r in rows]), fence
                )
                owned = set(session.scalars(query))
                update_rows(
                    session,
                    messages_t,
                    [r for r in rows if r["id"] in owned],
                    where=lambda _v: fence,
                )
        return [m for m in handed if int(m.message_id) in owned]

    def render(
        self, message: Message | Row[Any], contact: Any, context: dict[str, Any]
    ) -> Outbound:
        """``message``: its row or object (its id, key, channel, template, variant, step, address
        and meta); ``contact``: a ``Contact`` or a mapping of its fields."""
        return render_outbound(
            self.renderer,
            self.settings,
            message_id=str(message.id),
            idempotency_key=message.idempotency_key,
            channel=message.channel,
            template=message.template or "",
            variant=message.variant,
            step_id=message.step_id,
            to=message.to_address,
            contact=contact,
            values=template_values(
                (message.meta or {}).get("context", {}), context, message.step_id
            ),
        )


def template_values(
    step_context: Mapping[str, Any], enrollment: Mapping[str, Any], step_id: str | None
) -> dict[str, Any]:
    """What a step's template sees besides ``contact``: the step's ``context``, the trigger
    event's properties as top-level names ({{ order.number }}) and as ``event``/``trigger``,
    an API trigger's per-contact ``data`` ({{ data.code }}, and top-level names)."""
    trigger = enrollment.get("trigger") or {}
    properties = trigger.get("properties") or {} if isinstance(trigger, dict) else {}
    data = enrollment.get("data")
    return {
        **step_context,
        **properties,
        "event": properties,
        "trigger": trigger,
        "journey": {"step": step_id},
        **({"data": data} if isinstance(data, dict) else {}),
    }


def render_outbound(
    renderer: Any,
    settings: Settings,
    *,
    message_id: str,
    idempotency_key: str,
    channel: str,
    template: str,
    variant: str | None,
    step_id: str | None,
    to: str,
    contact: Any,
    values: Mapping[str, Any],
    locale: str | None = None,
) -> Outbound:
    """One message rendered for ``contact`` in the locale variant its locale picks (or
    ``locale``'s), ready for a channel; the outbox and test sends both come through here."""
    if channel == "sms":
        sms = renderer.render_sms(
            template, contact=contact, message_id=message_id, context=values, locale=locale
        )
        return OutboundSms(
            message_id=message_id,
            idempotency_key=idempotency_key,
            to=to,
            body=sms.body,
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            locale=sms.locale or None,
        )
    known = getattr(renderer.email(template), "subjects", {})
    email = renderer.render_email(
        template,
        contact=contact,
        message_id=message_id,
        context=values,
        variant=variant if variant in known else None,
        locale=locale,
    )
    return OutboundEmail(
        message_id=message_id,
        idempotency_key=idempotency_key,
        to=to,
        from_email=email.from_email or settings.email_from,
        from_name=email.from_name or settings.email_from_name,
        subject=email.subject,
        html=email.html,
        text=email.text,
        headers=dict(email.headers),
        reply_to=email.reply_to,
        categories=tuple(c for c in (step_id, variant) if c),
        metadata={"idempotency_key": idempotency_key},
        locale=email.locale or None,
    )


def _count(stats: DispatchStats, results: Sequence[SendResult]) -> None:
    for result in results:
        if result.status == "accepted":
            stats.sent += 1
            continue
        if result.status == "failed":
            stats.failed += 1
        else:
            stats.retry += 1
        stats.note(result)


class Pipeline:
    """Claim and render in the caller's thread while the previous batch is being sent.

    ``pump`` claims one batch, renders it, waits for the batch before it to be recorded, then
    hands it to the sender thread and returns how many it claimed. An error in the sender is
    raised by the next ``pump`` (or ``close``); nothing more is claimed after it.
    """

    def __init__(self, dispatcher: Dispatcher, stats: DispatchStats) -> None:
        self.dispatcher = dispatcher
        self.stats = stats
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="dispatch")
        self._pending: Future[None] | None = None

    def pump(
        self,
        *,
        now: datetime | None = None,
        limit: int = 1000,
        journey_ids: set[int] | None = None,
        only: list[int] | None = None,
        claim: Claim | None = None,
    ) -> int:
        """``claim``: rows already claimed (written so by the tick, ``tick_batch(claim_token=
        ...)``): their lease is held from here on, and nothing else is claimed."""
        if claim is None:
            claim = self.dispatcher.claim(
                now=now or utcnow(), limit=limit, journey_ids=journey_ids, only=only
            )
        elif claim.ids:
            self.dispatcher.leases.hold(claim)
        try:
            prepared = self.dispatcher.prepare(claim, self.stats) if claim.ids else None
            self.wait()
        except BaseException:
            self.dispatcher.leases.release(claim.token)
            raise
        if prepared is not None:
            self._pending = self._sender.submit(self.dispatcher.deliver, prepared, self.stats)
        return len(claim.ids)

    def wait(self) -> None:
        """Until the batch with the sender is recorded (its error raised here)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._sender.shutdown(wait=True)

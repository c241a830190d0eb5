"""Test sends and seed copies: a journey step, rendered and sent for real, kept out of the books.

``tidings journey test-send NAME --step S --to a@x,b@y [--contact ID] [--variant V]`` renders
step ``S`` for a real contact (or the first sample contact of ``templates/samples.yaml``) and
sends it through the configured channel to the given addresses. A journey with ``seeds:`` sends
each of those addresses a copy of every send step of each broadcast run.

Both are marked as tests: the subject (an SMS body) starts with ``[TEST]``, an email carries
``X-Tidings-Test: test`` or ``seed``, and the channel gets the message id ``test-<id>``. They are
stored in ``test_sends``, never in ``messages``: reports, frequency caps, consent, enrollments,
experiments and the outbox's exactly-once state never see them; opens, clicks and provider
events of a ``test-`` id belong to no message (``message_id`` NULL), and the unsubscribe link of
a test refuses (404) rather than change the consent of the contact it was rendered for.

>>> parse_address(" Ada@Example.com "), parse_address("+49 151 23456789")
(('email', 'ada@example.com'), ('sms', '+4915123456789'))
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from tidings.channels.types import Outbound, OutboundEmail, SendResult
from tidings.crm.db import insert_rows
from tidings.crm.models import Contact, Enrollment, TestSend
from tidings.crm.models import Journey as JourneyRow
from tidings.crm.normalize import FieldError, normalize_email, normalize_phone
from tidings.crm.types import utcnow
from tidings.errors import InputError, PermanentError
from tidings.journeys import schema as s

if TYPE_CHECKING:
    from tidings.journeys.dispatch import Dispatcher
    from tidings.journeys.runtime import Runtime

log = logging.getLogger(__name__)
test_sends_t: Table = TestSend.__table__  # type: ignore[assignment]

SUBJECT_PREFIX = "[TEST] "
TEST_HEADER = "X-Tidings-Test"
SEED_BATCH = 500


def parse_address(value: str) -> tuple[str, str]:
    """(channel, address): an email address (normalised) or an E.164 phone number."""
    text = value.strip()
    if "@" in text:
        return "email", normalize_email(text)
    if text.startswith(("+", "00")):
        return "sms", normalize_phone(text, region="ZZ")
    raise FieldError(
        f"{value!r} is neither an email address nor a phone number with its country code "
        "(+4915123456789)"
    )


def parse_recipients(value: str, *, channel: str, step: str) -> list[str]:
    """``--to a@x,b@y``: every address checked, all for the step's channel, no duplicates."""
    found: list[str] = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            kind, address = parse_address(part)
        except FieldError as exc:
            raise InputError(str(exc), location="--to") from None
        if kind != channel:
            wanted = "an email address" if channel == "email" else "a phone number (E.164)"
            raise InputError(
                f"{address} is {'an email address' if kind == 'email' else 'a phone number'}, "
                f"and step {step!r} sends {channel}",
                location="--to",
                hint=f"give {wanted}",
            )
        if address not in found:
            found.append(address)
    if not found:
        raise InputError("no address given", location="--to", hint="--to you@example.com")
    return found


@dataclass
class TestResult:
    id: int
    to: str
    status: str  # sent | failed
    subject: str | None
    locale: str | None
    provider_message_id: str | None = None
    error: str | None = None


def find_journey(runtime: Runtime, name: str) -> tuple[s.Journey, Path]:
    """The project's journey called ``name`` (or the journey file ``name``), validated."""
    from tidings.journeys.loader import journey_files, load_file

    given = Path(name)
    if given.suffix in {".yaml", ".yml"} and given.is_file():
        return load_file(given, references=runtime.references()), given
    names: list[str] = []
    for path in journey_files(runtime.settings.journeys_dir):
        if path.stem == name:
            return load_file(path, references=runtime.references()), path
        try:
            journey = load_file(path)
        except InputError:
            continue
        if journey.name == name:
            return load_file(path, references=runtime.references()), path
        names.append(journey.name)
    raise InputError(
        f"no journey named {name!r} in {runtime.settings.journeys_dir}",
        hint=f"journeys: {', '.join(sorted(names)) or 'none'}",
    )


def send_step(journey: s.Journey, step_id: str, source: Path) -> s.EmailStep | s.SmsStep:
    sends = [st for st in journey.steps if isinstance(st, s.SEND_STEPS)]
    for step in journey.steps:
        if step.id == step_id:
            if isinstance(step, s.SEND_STEPS):
                return step
            raise InputError(
                f"step {step_id!r} of journey {journey.name!r} is a {step.type} step, which "
                "sends nothing",
                location=f"{source} (--step)",
                hint=f"send steps: {', '.join(st.id for st in sends) or 'none'}",
            )
    raise InputError(
        f"journey {journey.name!r} has no step {step_id!r}",
        location=f"{source} (--step)",
        hint=f"send steps: {', '.join(st.id for st in sends) or 'none'}",
    )


def step_template(step: s.EmailStep | s.SmsStep, variant: str | None, source: Path) -> str:
    """The template a variant of the step sends (the step's, unless the variant names one)."""
    if variant is None:
        return step.template
    names = [v.name for v in step.experiment.variants] if step.experiment else []
    if variant not in names:
        raise InputError(
            f"step {step.id!r} has no variant {variant!r}",
            location=f"{source} (--variant)",
            hint=f"variants: {', '.join(names)}" if names else "this step runs no experiment",
        )
    assert step.experiment is not None
    chosen = next(v for v in step.experiment.variants if v.name == variant)
    return chosen.template or step.template


def sample_contact(runtime: Runtime) -> tuple[dict[str, Any], str]:
    """The first sample contact of ``templates/samples.yaml``, and its name."""
    from tidings.templates.check import load_samples

    samples = load_samples(runtime.renderer.root / "samples.yaml")
    first = dict(samples.contacts[0])
    return first, str(first.get("external_id") or first.get("id") or 1)


def mark(outbound: Outbound, kind: str) -> Outbound:
    """The test marks: ``[TEST]`` before the subject (or SMS body), ``X-Tidings-Test``."""
    if isinstance(outbound, OutboundEmail):
        subject = outbound.subject
        if not subject.startswith(SUBJECT_PREFIX):
            subject = SUBJECT_PREFIX + subject
        return dataclasses.replace(
            outbound,
            subject=subject,
            headers={**outbound.headers, TEST_HEADER: kind},
            categories=(*outbound.categories, "tidings-test"),
        )
    return dataclasses.replace(outbound, body=SUBJECT_PREFIX + outbound.body)


def test_send(
    runtime: Runtime,
    *,
    journey: str,
    step: str,
    to: str,
    contact: str | None = None,
    variant: str | None = None,
) -> list[TestResult]:
    """Render ``step`` of ``journey`` for one contact and send it to each address of ``to``."""
    from tidings.journeys.dispatch import render_outbound, template_values
    from tidings.journeys.running import find_contact

    definition, source = find_journey(runtime, journey)
    chosen = send_step(definition, step, source)
    template = step_template(chosen, variant, source)
    addresses = parse_recipients(to, channel=chosen.type, step=chosen.id)
    detail: dict[str, Any] = {}
    contact_id: int | None = None
    enrollment: dict[str, Any] = {}
    if contact is None:
        person: Any
        person, who = sample_contact(runtime)
        detail["sample"] = who
    else:
        contact_id = find_contact(runtime, contact)
        with Session(runtime.db) as session:
            person = session.get(Contact, contact_id)
            # the data the contact's latest entry into this journey carries ({{ order.number }})
            latest = session.scalars(
                select(Enrollment.context)
                .join(JourneyRow, JourneyRow.id == Enrollment.journey_id)
                .where(Enrollment.contact_id == contact_id, JourneyRow.name == definition.name)
                .order_by(Enrollment.id.desc())
                .limit(1)
            ).first()
            enrollment = dict(latest or {})
            session.expunge_all()
    values = _sample_context(runtime, template)
    values.update(template_values(chosen.context, enrollment, chosen.id))
    channel = runtime.dispatcher.channels[chosen.type]
    now = utcnow()
    rows = []
    with Session(runtime.db) as session, session.begin():
        for address in addresses:
            row = TestSend(
                kind="test",
                idempotency_key=f"test:{uuid.uuid4().hex}",
                journey=definition.name,
                journey_id=None,
                step_id=chosen.id,
                variant=variant,
                channel=chosen.type,
                template=template,
                contact_id=contact_id,
                to_address=address,
                status="sending",
                created_at=now,
                detail=detail,
            )
            session.add(row)
            rows.append(row)
        session.flush()
        ids = [row.id for row in rows]
    outbound: list[Outbound] = []
    failures: list[SendResult] = []
    for row_id, address in zip(ids, addresses, strict=True):
        try:
            item = render_outbound(
                runtime.renderer,
                runtime.settings,
                message_id=f"test-{row_id}",
                idempotency_key=f"test:{row_id}",
                channel=chosen.type,
                template=template,
                variant=variant,
                step_id=chosen.id,
                to=address,
                contact=person,
                values=values,
            )
        except (PermanentError, InputError) as exc:
            failures.append(_failed(row_id, address, chosen.type, exc))
            continue
        outbound.append(mark(item, "test"))
    results = failures + (list(channel.send_batch(outbound)) if outbound else [])
    return _record(runtime.db, outbound, results)


def _sample_context(runtime: Runtime, template: str) -> dict[str, Any]:
    """The sample context ``templates check`` renders ``template`` with (cart, order, ...), so
    a step whose data comes from its trigger renders for a contact who never entered it."""
    from tidings.templates.check import load_samples

    path = runtime.renderer.root / "samples.yaml"
    return load_samples(path).context_for(template) if path.is_file() else {}


def _failed(row_id: int, address: str, channel: str, exc: Exception) -> SendResult:
    location = getattr(exc, "location", None)
    reason = getattr(exc, "message", str(exc))
    return SendResult(
        message_id=f"test-{row_id}",
        status="failed",
        provider="render",
        channel=channel,
        to=address,
        error=f"{location}: {reason}" if location else str(reason),
        attempts=0,
    )


def _record(db: Any, outbound: list[Outbound], results: list[SendResult]) -> list[TestResult]:
    """Each result on its ``test_sends`` row: sent, or failed with the reason."""
    sent = {item.message_id: item for item in outbound}
    now = utcnow()
    out = []
    with Session(db) as session, session.begin():
        for result in results:
            row_id = int(result.message_id.removeprefix("test-"))
            item = sent.get(result.message_id)
            ok = result.status == "accepted"
            subject = item.subject if isinstance(item, OutboundEmail) else None
            locale = item.locale if item is not None else None
            error = None if ok else f"{result.status}: {result.error or 'no reason given'}"
            session.execute(
                update(test_sends_t)
                .where(test_sends_t.c.id == row_id)
                .values(
                    status="sent" if ok else "failed",
                    subject=subject,
                    locale=locale,
                    provider=result.provider,
                    provider_message_id=result.provider_message_id,
                    error=error,
                    sent_at=now if ok else None,
                    claim_token=None,
                )
            )
            out.append(
                TestResult(
                    row_id,
                    result.to,
                    "sent" if ok else "failed",
                    subject,
                    locale,
                    result.provider_message_id,
                    error,
                )
            )
    return sorted(out, key=lambda r: r.id)


# -- seeds ------------------------------------------------------------------------------------


def queue_seed_copies(
    session: Session,
    *,
    version_id: int,
    journey: s.Journey,
    step: s.EmailStep | s.SmsStep,
    enrollment_ids: list[int],
    now: datetime,
) -> None:
    """In the tick's transaction: one queued seed copy per seed address (of the step's
    channel), broadcast run and variant; a run's later batches find theirs already there."""
    addresses = [a for a in journey.seeds if parse_address(a)[0] == step.type]
    if not addresses or not enrollment_ids:
        return
    runs = list(
        session.scalars(
            select(Enrollment.entry_key).where(Enrollment.id.in_(enrollment_ids)).distinct()
        )
    )
    variants: list[tuple[str | None, str]] = (
        [(v.name, v.template or step.template) for v in step.experiment.variants]
        if step.experiment
        else [(None, step.template)]
    )
    rows = [
        {
            "kind": "seed",
            "idempotency_key": f"seed:{version_id}:{step.id}:{run}:{variant or ''}:{address}",
            "journey": journey.name,
            "journey_id": version_id,
            "step_id": step.id,
            "variant": variant,
            "channel": step.type,
            "template": template,
            "to_address": address,
            "status": "queued",
            "created_at": now,
            "detail": {"run": run, "context": step.context},
        }
        for run in sorted(runs)
        for variant, template in variants
        for address in addresses
    ]
    insert_rows(session, test_sends_t, rows)


def send_seed_copies(dispatcher: Dispatcher, *, limit: int = SEED_BATCH) -> int:
    """Send queued seed copies (rendered for the first sample contact); how many went out.

    A copy is claimed by a conditional update (queued -> sending under a token), so two workers
    never send the same one; a crash after the claim leaves it ``sending``: a seed copy is sent
    at most once, never retried blindly."""
    from tidings.journeys.dispatch import render_outbound, template_values
    from tidings.templates.check import load_samples

    token = uuid.uuid4().hex
    with Session(dispatcher.db) as session, session.begin():
        queued = select(test_sends_t.c.id).where(test_sends_t.c.status == "queued")
        if dispatcher.db.dialect.name == "postgresql":
            queued = queued.with_for_update(skip_locked=True)
        ids = list(session.scalars(queued.order_by(test_sends_t.c.id).limit(limit)))
        if not ids:
            return 0
        session.execute(
            update(test_sends_t)
            .where(test_sends_t.c.id.in_(ids), test_sends_t.c.status == "queued")
            .values(status="sending", claim_token=token)
        )
    with Session(dispatcher.db) as session:
        rows = list(session.scalars(select(TestSend).where(TestSend.claim_token == token)))
        session.expunge_all()
    samples_path = dispatcher.renderer.root / "samples.yaml"
    samples = load_samples(samples_path) if samples_path.is_file() else None
    sample = dict(samples.contacts[0]) if samples else {}
    by_channel: dict[str, list[Outbound]] = {}
    results: list[SendResult] = []
    for row in rows:
        person = {**sample, "email" if row.channel == "email" else "phone": row.to_address}
        values = {**(samples.context_for(row.template) if samples else {})}
        values.update(template_values((row.detail or {}).get("context", {}), {}, row.step_id))
        try:
            item = render_outbound(
                dispatcher.renderer,
                dispatcher.settings,
                message_id=f"test-{row.id}",
                idempotency_key=row.idempotency_key,
                channel=row.channel,
                template=row.template,
                variant=row.variant,
                step_id=row.step_id,
                to=row.to_address,
                contact=person,
                values=values,
            )
        except (PermanentError, InputError) as exc:
            results.append(_failed(row.id, row.to_address, row.channel, exc))
            continue
        by_channel.setdefault(row.channel, []).append(mark(item, "seed"))
    outbound: list[Outbound] = []
    for channel_name, batch in by_channel.items():
        channel = dispatcher.channels.get(channel_name)
        outbound += batch
        if channel is None:
            results += [
                SendResult.failed(m, provider="none", error=f"no {channel_name} channel")
                for m in batch
            ]
            continue
        results += channel.send_batch(batch)
    recorded = _record(dispatcher.db, outbound, results)
    failed = [r for r in recorded if r.status != "sent"]
    for result in failed[:5]:
        log.warning("seed copy %s to %s failed: %s", result.id, result.to, result.error)
    return len(recorded) - len(failed)

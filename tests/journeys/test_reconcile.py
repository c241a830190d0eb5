"""Reconciliation of messages left in flight: sent if the provider has them, requeued if it
certainly does not, left alone (unknown) if it cannot tell."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tests.journeys.test_engine import T0, add_contacts, people
from tests.journeys.test_triggers import runtime  # noqa: F401 - the fixture
from tidings.channels.smtp import SmtpChannel
from tidings.crm.models import Message
from tidings.journeys.loader import load_text
from tidings.journeys.reconcile import reconcile, resolve
from tidings.journeys.runtime import Runtime


def test_reconcile_asks_before_resending(runtime: Runtime, tmp_path: Path) -> None:  # noqa: F811
    ids = add_contacts(runtime.db, people(6))
    version = runtime.engine.register(
        load_text(
            "name: rec\ntrigger: {type: api}\n"
            "steps:\n  - {id: a, type: email, template: welcome}\n",
            source="rec.yaml",
        )
    )
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    runtime.engine.tick("rec", now=T0)
    runtime.dispatcher.dispatch(now=T0)  # all six written to the outbox and marked sent
    with Session(runtime.db) as session, session.begin():
        mids = list(session.scalars(select(Message.id).order_by(Message.id)))
        # a crash after the hand-off (and its lease run out): rows still in flight, files there
        # for the first three
        session.execute(
            update(Message).values(
                status="in_flight", updated_at=T0, handed_at=T0, lease_until=None
            )
        )
    for mid in mids[3:]:
        for path in (tmp_path / "outbox").glob(f"*{mid}*"):
            path.unlink()

    assert reconcile(runtime, older_than=timedelta(minutes=10), now=T0).checked == 0  # too new
    stats = reconcile(
        runtime, older_than=timedelta(minutes=10), now=T0 + timedelta(hours=1), chunk=2
    )
    assert (stats.checked, stats.sent, stats.requeued, stats.unknown) == (6, 3, 3, 0)
    with Session(runtime.db) as session:
        statuses = list(session.scalars(select(Message.status).order_by(Message.id)))
    assert statuses == ["sent"] * 3 + ["queued"] * 3
    assert runtime.dispatcher.dispatch(now=T0 + timedelta(hours=1)).sent == 3  # only those

    # a channel that cannot tell (SMTP keeps no record we can query): left in flight, unless
    # the message was never handed over (claimed, then the crash): queued without asking
    with Session(runtime.db) as session, session.begin():
        session.execute(
            update(Message).values(
                status="in_flight", updated_at=T0, handed_at=T0, lease_until=None
            )
        )
        session.execute(update(Message).where(Message.id == mids[0]).values(handed_at=None))
    runtime.dispatcher.channels = {"email": SmtpChannel(host="127.0.0.1", port=1)}
    stats = reconcile(
        runtime, older_than=timedelta(minutes=10), now=T0 + timedelta(hours=2), chunk=4
    )
    assert (stats.checked, stats.unknown, stats.sent, stats.requeued) == (6, 5, 0, 1)
    assert stats.unknown_ids == mids[1:]

    # ops settle what nobody could tell: found in the relay's log, or to be sent again
    assert resolve(runtime, mids[1:3], sent=True, now=T0) == 2
    assert resolve(runtime, mids[3:], sent=False, now=T0) == 3
    assert resolve(runtime, mids, sent=True, now=T0) == 0  # only rows still in flight change
    with Session(runtime.db) as session:
        statuses = list(session.scalars(select(Message.status).order_by(Message.id)))
    assert statuses == ["queued", "sent", "sent", "queued", "queued", "queued"]

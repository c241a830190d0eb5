"""The ownership of in-flight messages (docs/journeys.md, "Leases"), one interleaving at a time.

Invariant: a message is handed to a provider only by the claim that owns it at that moment, and
reconcile takes back only what no live claim owns. Each test drives two workers (two
dispatchers, as two processes would be) through one interleaving by hand.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tests.journeys.test_engine import T0, add_contacts, people
from tests.simulators.fixtures import sendgrid_sim
from tests.simulators.sendgrid import SendGridSimulator
from tidings.channels.base import RetryPolicy
from tidings.channels.sendgrid import SendGridChannel
from tidings.config import Settings
from tidings.crm.models import Message
from tidings.crm.types import utcnow
from tidings.journeys.dispatch import DispatchStats
from tidings.journeys.loader import load_text
from tidings.journeys.reconcile import reconcile
from tidings.journeys.runtime import Runtime

__all__ = ["sendgrid_sim"]
JOURNEY = "name: lease\ntrigger: {type: api}\nsteps:\n  - {id: a, type: email, template: welcome}\n"


def worker(
    store_url: str, outbox: Path, lease: float, sim: SendGridSimulator | None = None
) -> Runtime:
    settings = Settings(
        database_url=store_url,
        outbox_dir=outbox,
        secret_key="lease",
        frequency_cap="off",
        quiet_hours="off",
        lease_seconds=lease,
    )
    channels = None
    if sim is not None:
        email = SendGridChannel(
            api_key=sim.api_key, host=sim.url, retry=RetryPolicy(max_attempts=1)
        )
        channels = {"email": email, "sms": email}
    runtime = Runtime.from_settings(settings, channels=channels)
    runtime.engine.register(load_text(JOURNEY, source="lease.yaml"))
    return runtime


def queue(runtime: Runtime, n: int) -> list[int]:
    ids = add_contacts(runtime.db, people(n))
    version = runtime.engine.versions("lease")[-1]
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    runtime.engine.tick("lease", now=T0)
    with Session(runtime.db) as session:
        return list(session.scalars(select(Message.id).order_by(Message.id)))


def statuses(runtime: Runtime) -> list[str]:
    with Session(runtime.db) as session:
        return list(session.scalars(select(Message.status).order_by(Message.id)))


def test_reconcile_leaves_a_live_claim_alone(store_url: str, tmp_path: Path) -> None:
    """A claimed batch waiting behind a slow send is older than any reconcile window; its
    worker is alive, so it stays that worker's (today's duplicate: requeued and sent twice)."""
    a = worker(store_url, tmp_path / "outbox", lease=60)
    mids = queue(a, 5)
    claim = a.dispatcher.claim(now=T0, limit=10)
    assert claim.ids == mids
    later = utcnow() + timedelta(hours=1)
    assert reconcile(a, older_than=timedelta(0), now=later).checked == 0
    stats = DispatchStats()
    a.dispatcher.deliver(a.dispatcher.prepare(claim, stats), stats)
    assert (stats.sent, stats.lost) == (5, 0)
    assert statuses(a) == ["sent"] * 5


def test_a_worker_that_lost_its_lease_sends_nothing_it_lost(
    store_url: str, tmp_path: Path, sendgrid_sim: SendGridSimulator
) -> None:
    """A pauses past its lease with a rendered batch; reconcile takes the rows back; B sends
    them; A wakes up and reaches the hand-over: its token is gone, it sends none of them."""
    outbox = tmp_path / "outbox"
    a = worker(store_url, outbox, 3600, sendgrid_sim)  # no heartbeat runs during this test
    b = worker(store_url, outbox, 3600, sendgrid_sim)
    mids = queue(a, 6)
    claim = a.dispatcher.claim(now=T0, limit=10)
    stats_a = DispatchStats()
    prepared = a.dispatcher.prepare(claim, stats_a)
    with Session(a.db) as session, session.begin():  # A's pause outlived its lease
        session.execute(update(Message).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert reconcile(b, older_than=timedelta(0), now=utcnow()).requeued == 6
    stats_b = b.dispatcher.dispatch(now=T0)
    assert stats_b.sent == 6
    a.dispatcher.deliver(prepared, stats_a)
    assert (stats_a.sent, stats_a.lost) == (0, 6)
    assert sorted(p.custom_args["tidings_message_id"] for p in sendgrid_sim.processed) == sorted(
        str(m) for m in mids
    )
    assert statuses(a) == ["sent"] * 6


def test_a_lost_claim_cannot_put_back_a_row_another_worker_owns(
    store_url: str, tmp_path: Path
) -> None:
    """A result of A's arriving after B took the row (a retry, a failure) changes nothing."""
    from tidings.channels.types import SendResult

    a = worker(store_url, tmp_path / "outbox", lease=3600)
    b = worker(store_url, tmp_path / "outbox", lease=3600)
    (mid,) = queue(a, 1)
    stale = a.dispatcher.claim(now=T0, limit=1)
    with Session(a.db) as session, session.begin():
        session.execute(update(Message).values(lease_until=utcnow() - timedelta(seconds=1)))
    reconcile(b, older_than=timedelta(0), now=utcnow())
    fresh = b.dispatcher.claim(now=T0, limit=1)
    assert fresh.ids == [mid] and fresh.token != stale.token
    a.dispatcher.record([SendResult(str(mid), "retry", "outbox", error="429")], token=stale.token)
    assert statuses(a) == ["in_flight"]  # still B's, not queued for a third worker
    b.dispatcher.leases.release(fresh.token)
    a.dispatcher.leases.release(stale.token)


def test_the_heartbeat_keeps_the_lease_and_stops_with_the_claim(
    store_url: str, tmp_path: Path
) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("wall-clock lease renewals are the same SQL on SQLite; once is enough")
    a = worker(store_url, tmp_path / "outbox", lease=0.6)
    queue(a, 3)
    claim = a.dispatcher.claim(now=T0, limit=10)
    time.sleep(1.5)  # more than two leases: only the heartbeat keeps it
    assert reconcile(a, older_than=timedelta(0), now=utcnow()).checked == 0
    a.dispatcher.leases.release(claim.token)
    time.sleep(0.8)  # no heartbeat for a released claim: the lease runs out
    assert reconcile(a, older_than=timedelta(0), now=utcnow()).requeued == 3


def test_an_erasure_while_a_worker_sends_holds_what_is_not_handed_over(
    store_url: str, tmp_path: Path
) -> None:
    """Erased between claim and hand-over: the claim is taken away, the fence refuses the
    message, nothing is sent or written to the outbox; the others go out as usual."""
    from tidings.crm.erasure import erase_contact

    outbox = tmp_path / "outbox"
    a = worker(store_url, outbox, lease=3600)
    mids = queue(a, 4)
    claim = a.dispatcher.claim(now=T0, limit=2)  # P0 and P1 claimed, P2 and P3 still queued
    stats = DispatchStats()
    prepared = a.dispatcher.prepare(claim, stats)  # rendered, in memory, not yet handed over
    with Session(a.db) as session:
        owners = dict(session.execute(select(Message.id, Message.contact_id)).tuples().all())
    for mid in (mids[0], mids[2]):  # one claimed, one queued
        result = erase_contact(a.db, owners[mid], actor="cli:test", settings=a.settings)
        assert result.counts["messages"]["held"] == 1
    a.dispatcher.deliver(prepared, stats)
    assert (stats.sent, stats.lost) == (1, 1)
    later = a.dispatcher.dispatch(now=T0)
    assert later.sent == 1 and later.claimed == 1  # P3 only: P2's message is held
    assert statuses(a) == ["held", "sent", "held", "sent"]
    assert sorted(p.stem for p in outbox.glob("*.eml")) == sorted([str(mids[1]), str(mids[3])])
    assert "p0@example.com" not in "".join(p.read_text() for p in outbox.iterdir())


def test_an_erasure_after_the_hand_over_records_the_result_without_personal_data(
    store_url: str, tmp_path: Path
) -> None:
    """Already with the provider: the result is recorded (a second send is what must never
    happen), but the provider's reason and a suppression in clear are not kept; reconcile
    and a later dispatch never send the erased contact's message again."""
    from tidings.channels.types import SendResult
    from tidings.crm.erasure import erase_contact
    from tidings.crm.models import Suppression

    a = worker(store_url, tmp_path / "outbox", lease=3600)
    (mid,) = queue(a, 1)
    claim = a.dispatcher.claim(now=T0, limit=1)
    prepared = a.dispatcher.prepare(claim, DispatchStats())
    handed = a.dispatcher.record([], token=claim.token, handed=prepared.outbound["email"])
    assert [int(m.message_id) for m in handed] == [mid]
    with Session(a.db) as session:
        contact = session.execute(select(Message.contact_id)).scalar_one()
    result = erase_contact(a.db, contact, actor="cli:test", settings=a.settings)
    assert "held" not in result.counts["messages"]  # with the provider: not held
    bounce = SendResult(
        str(mid),
        "failed",
        "smtp",
        to="p0@example.com",
        error="550 5.1.1 <p0@example.com>: no such user",
        suppress=True,
        suppress_reason="hard bounce",
    )
    a.dispatcher.record([bounce], token=claim.token)
    a.dispatcher.leases.release(claim.token)
    with Session(a.db) as session:
        row = session.execute(select(Message.status, Message.error, Message.to_address)).one()
        suppressed = list(session.scalars(select(Suppression.address)))
    assert tuple(row) == ("failed", None, "") and suppressed == []
    # put back in the queue (as reconcile would for a message the provider never got)
    with Session(a.db) as session, session.begin():
        session.execute(update(Message).values(status="queued", claim_token=None))
    again = a.dispatcher.dispatch(now=T0)
    assert (again.sent, again.render_failed) == (0, 1)
    assert statuses(a) == ["failed"]


def born_claimed(runtime: Runtime, n: int, token: str) -> list[int]:
    """n contacts enrolled and advanced by a worker's tick that writes its messages already
    claimed under ``token`` (``running.work``); the message ids it claimed."""
    ids = add_contacts(runtime.db, people(n))
    version = runtime.engine.versions("lease")[-1]
    runtime.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    stats = runtime.engine.tick_batch(
        {version.id: version}, now=T0, batch_size=100, claim_token=token
    )
    assert stats.messages == n
    return stats.claimed


def test_a_tick_writes_its_messages_claimed_and_a_crash_there_is_reconciled(
    store_url: str, tmp_path: Path, sendgrid_sim: SendGridSimulator
) -> None:
    """The tick's messages are born in flight under the worker's token (no handed_at): the
    same state a claim leaves. The worker dies before the hand-over; once the lease has run
    out, reconcile queues them without asking anyone, and another worker sends each once."""
    a = worker(store_url, tmp_path / "outbox", 3600, sendgrid_sim)
    b = worker(store_url, tmp_path / "outbox", 3600, sendgrid_sim)
    mids = born_claimed(a, 4, "a" * 32)
    with Session(a.db) as session:
        rows = session.execute(
            select(Message.status, Message.claim_token, Message.handed_at, Message.lease_until)
        ).all()
    assert [(r.status, r.claim_token, r.handed_at) for r in rows] == [
        ("in_flight", "a" * 32, None)
    ] * 4
    assert all(r.lease_until > utcnow() + timedelta(minutes=30) for r in rows)
    assert b.dispatcher.claim(now=T0, limit=10).ids == []  # not anyone else's to take
    assert reconcile(b, older_than=timedelta(0), now=utcnow()).checked == 0  # lease alive
    with Session(a.db) as session, session.begin():  # A is dead: its lease runs out
        session.execute(update(Message).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert reconcile(b, older_than=timedelta(0), now=utcnow()).requeued == 4
    assert b.dispatcher.dispatch(now=T0).sent == 4
    assert sorted(p.custom_args["tidings_message_id"] for p in sendgrid_sim.processed) == sorted(
        str(m) for m in mids
    )
    assert statuses(a) == ["sent"] * 4


def test_a_born_claimed_batch_is_fenced_like_a_claimed_one(
    store_url: str, tmp_path: Path, sendgrid_sim: SendGridSimulator
) -> None:
    """The worker that wrote them pauses past its lease; B takes them over and sends them; A
    reaches the hand-over with its token gone and sends none."""
    from tidings.journeys.dispatch import Claim

    a = worker(store_url, tmp_path / "outbox", 3600, sendgrid_sim)
    b = worker(store_url, tmp_path / "outbox", 3600, sendgrid_sim)
    mids = born_claimed(a, 3, "a" * 32)
    stats_a = DispatchStats()
    prepared = a.dispatcher.prepare(Claim("a" * 32, mids), stats_a)
    with Session(a.db) as session, session.begin():
        session.execute(update(Message).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert reconcile(b, older_than=timedelta(0), now=utcnow()).requeued == 3
    assert b.dispatcher.dispatch(now=T0).sent == 3
    a.dispatcher.deliver(prepared, stats_a)
    assert (stats_a.sent, stats_a.lost) == (0, 3)
    assert len(sendgrid_sim.processed) == 3
    assert statuses(a) == ["sent"] * 3


def test_the_worker_loop_sends_what_its_ticks_claimed(store_url: str, tmp_path: Path) -> None:
    """``work``: tick after tick writes claimed rows and sends them in the same worker; a
    message queued by someone else (a retry, another process) is still claimed and sent."""
    from rich.console import Console

    from tidings.journeys.running import work

    a = worker(store_url, tmp_path / "outbox", 60)
    ids = add_contacts(a.db, people(7))
    version = a.engine.versions("lease")[-1]
    a.engine.enroll_contacts(version, list(ids.values())[:2], entry_key="k", now=T0)
    a.engine.tick("lease", now=T0)  # 2 queued the ordinary way
    a.engine.enroll_contacts(version, list(ids.values())[2:], entry_key="k", now=T0)
    summary = work(
        a, "lease", reconcile_after=timedelta(minutes=5), batch_size=2, report=Console(quiet=True)
    )
    assert (summary["processed"], summary["sent"]) == (5, 7)
    assert statuses(a) == ["sent"] * 7
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 7


def test_a_worker_that_fails_mid_loop_holds_no_lease_on_the_batch_ticked_ahead(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ticker advances one batch ahead; when rendering fails, ``work`` ends with the error
    and lets go of the batch ahead (no heartbeat keeps it): its rows are claimed, never handed
    over, and go back to the queue through reconcile once the lease runs out."""
    from rich.console import Console

    from tidings.journeys.running import work

    a = worker(store_url, tmp_path / "outbox", 60)
    ids = add_contacts(a.db, people(6))
    version = a.engine.versions("lease")[-1]
    a.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("render broke")

    monkeypatch.setattr(a.dispatcher, "prepare", broken)
    with pytest.raises(RuntimeError, match="render broke"):
        work(
            a,
            "lease",
            reconcile_after=timedelta(minutes=5),
            batch_size=2,
            report=Console(quiet=True),
        )
    assert a.dispatcher.leases._held == {}
    with Session(a.db) as session:
        rows = session.execute(select(Message.status, Message.handed_at)).all()
    assert rows and all(r.status == "in_flight" and r.handed_at is None for r in rows)
    with Session(a.db) as session, session.begin():
        session.execute(update(Message).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert reconcile(a, older_than=timedelta(0), now=utcnow()).requeued == len(rows)

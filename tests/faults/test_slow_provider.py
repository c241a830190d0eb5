"""Faults around the send path: a provider slower than the reconcile window, a provider lookup
that fails. After each, every eligible contact got exactly one message at the simulator.

The slow-provider case is the one seen from outside: `journey work` claims its next batch while
the current one is still sending; a tick meanwhile reconciles whatever has been in flight longer
than TIDINGS_RECONCILE_AFTER and sends it again. Here the window is 0 s and the provider takes
a second per batch, so every claimed batch is "old" to the ticking worker.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tests.journeys.test_engine import T0, add_contacts, people
from tests.simulators.sendgrid import SendGridSimulator
from tests.simulators.twilio import TwilioSimulator
from tidings.channels.base import RetryPolicy
from tidings.channels.ratelimit import LocalRateLimiter
from tidings.channels.sendgrid import SendGridChannel
from tidings.channels.twilio import TwilioChannel
from tidings.config import Settings
from tidings.crm.models import Message
from tidings.journeys.loader import load_text
from tidings.journeys.reconcile import reconcile
from tidings.journeys.running import tick_all, work
from tidings.journeys.runtime import Runtime

JOURNEY = "name: slow\ntrigger: {type: api}\nsteps:\n  - {id: a, type: email, template: welcome}\n"
CONTACTS = 150
ORDER = {
    "trigger": {"properties": {"order": {"number": "7", "tracking_url": "https://t.example/7"}}}
}


def runtime(url: str, tmp_path: Path, channels: dict[str, Any], **settings: object) -> Runtime:
    built = Runtime.from_settings(
        Settings(
            database_url=url,
            outbox_dir=tmp_path / "outbox",
            secret_key="faults",
            frequency_cap="off",
            quiet_hours="off",
            **settings,  # type: ignore[arg-type]
        ),
        channels=channels,
    )
    built.engine.register(load_text(JOURNEY, source="slow.yaml"))
    return built


def sendgrid(sim: SendGridSimulator) -> SendGridChannel:
    # 25 messages a second: a batch of 25 takes a second at the provider
    return SendGridChannel(
        api_key=sim.api_key,
        host=sim.url,
        retry=RetryPolicy(max_attempts=2),
        rate_limiter=LocalRateLimiter({"sendgrid": 25}),
    )


def test_a_provider_slower_than_the_reconcile_window_sends_once(
    postgres_url: str, tmp_path: Path, sendgrid_sim: SendGridSimulator
) -> None:
    worker = runtime(postgres_url, tmp_path, {"email": sendgrid(sendgrid_sim)}, lease_seconds=2)
    ticker = runtime(
        postgres_url, tmp_path, {"email": sendgrid(sendgrid_sim)}, reconcile_after="0 seconds"
    )
    ids = add_contacts(worker.db, people(CONTACTS))
    version = worker.engine.versions("slow")[-1]
    worker.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)

    done = threading.Event()
    failure: list[BaseException] = []

    def run_worker() -> None:
        try:
            work(
                worker,
                "slow",
                reconcile_after=timedelta(0),
                batch_size=25,
                report=Console(quiet=True),
            )
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run_worker)
    thread.start()
    ticks = 0
    while not done.wait(0.2):  # "a tick every minute", compressed: reconcile, as each tick does
        reconcile(ticker, older_than=timedelta(0))
        ticks += 1
    thread.join()
    assert not failure, failure
    tick_all(ticker, names=["slow"])  # what is left (a batch the ticker claimed) goes out

    counts = Counter(p.custom_args["tidings_message_id"] for p in sendgrid_sim.processed)
    assert ticks >= 3  # the ticker really ran during the broadcast
    assert max(counts.values()) == 1, [m for m, n in counts.items() if n > 1][:10]
    assert len(counts) == CONTACTS
    with Session(worker.db) as session:
        statuses = dict(
            (s, n)
            for s, n in session.execute(
                select(Message.status, func.count()).group_by(Message.status)
            )
        )
    assert statuses == {"sent": CONTACTS}


def test_a_failing_lookup_leaves_its_rows_and_the_tick_goes_on(
    postgres_url: str, tmp_path: Path, twilio_sim: TwilioSimulator
) -> None:
    """Twilio answers 500 to its message list (the SDK raises the base TwilioException): those
    SMS stay in flight as unknown, asked again next time; the tick still sends the rest."""
    sms = TwilioChannel(
        account_sid=twilio_sim.account_sid,
        auth_token=twilio_sim.auth_token,
        api_base=twilio_sim.url,
        from_number="+15005550006",
        retry=RetryPolicy(max_attempts=1),
    )
    built = Runtime.from_settings(
        Settings(database_url=postgres_url, secret_key="f", frequency_cap="off", quiet_hours="off"),
        channels={"sms": sms, "email": sms},
    )
    built.engine.register(
        load_text(
            "name: texts\ntrigger: {type: api}\nsteps:\n"
            "  - {id: a, type: sms, template: order_shipped}\n",
            source="texts.yaml",
        )
    )
    ids = add_contacts(built.db, people(4))
    version = built.engine.versions("texts")[-1]
    built.engine.enroll_contacts(
        version, list(ids.values())[:2], entry_key="k", context=ORDER, now=T0
    )
    built.engine.tick("texts", now=T0)
    with Session(built.db) as session, session.begin():  # a crash after the hand-over
        session.execute(
            update(Message).values(
                status="in_flight", handed_at=T0, updated_at=T0, lease_until=None
            )
        )
    twilio_sim.failing_lists = 10
    later = T0 + timedelta(hours=1)
    stats = reconcile(built, older_than=timedelta(minutes=10), now=later)
    assert (stats.checked, stats.unknown, stats.sent, stats.requeued) == (2, 2, 0, 0)

    built.engine.enroll_contacts(
        version, list(ids.values())[2:], entry_key="k", context=ORDER, now=later
    )
    summary = tick_all(built, names=["texts"], now=later)  # reconcile fails again, tick goes on
    assert summary[0]["sent"] == 2
    twilio_sim.failing_lists = 0
    stats = reconcile(built, older_than=timedelta(minutes=10), now=later)
    assert (stats.checked, stats.requeued) == (2, 2)  # Twilio never had them: safe to send

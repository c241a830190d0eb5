"""Exactly once under kill -9: a broadcast on PostgreSQL, its worker killed at random points.

A worker (`tidings journey work`, its own process) advances the journey and sends through the
SendGrid adapter to the simulator. The test kills it with SIGKILL at 20+ random moments after
it is ready (mid-transaction, mid-batch, between the provider's 202 and our record of it) and
starts a new one each time; each new worker first reconciles what the dead one left in flight.
In the end the simulator's own record must show every eligible contact exactly once.

Size: TIDINGS_KILL_TEST_CONTACTS (default 100,000, as the issue asks).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from tests.simulators.sendgrid import SendGridSimulator
from tidings.config import Settings
from tidings.crm.db import make_engine
from tidings.crm.models import Contact, Message
from tidings.journeys.engine import JourneyEngine
from tidings.journeys.loader import load_text

CONTACTS = int(os.environ.get("TIDINGS_KILL_TEST_CONTACTS", "100000"))
LEASE = 2.0  # seconds: a killed worker's claims are free again this soon (a loaded CI too)
KILLS = 20
JOURNEY = """
name: broadcast_kill
trigger: {type: api}
steps:
  - {id: news, type: email, template: welcome}
"""


@pytest.fixture
def simulator() -> Iterator[SendGridSimulator]:
    with SendGridSimulator(api_key="SG.kill") as sim:
        yield sim


def load_contacts(url: str, n: int) -> int:
    """COPY n contacts in; every 50th has no email consent. Returns how many are eligible."""
    engine = make_engine(url)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(
            "COPY contacts (external_id, email, first_name, attributes, created_at, updated_at) "
            "FROM STDIN"
        ) as copy:
            for i in range(n):
                copy.write_row(
                    (f"K{i}", f"k{i}@example.com", "Kim", "{}", "2026-01-01Z", "2026-01-01Z")
                )
        cursor.execute(
            "INSERT INTO consents (contact_id, channel, purpose, status, source, updated_at) "
            "SELECT id, 'email', 'marketing', "
            "CASE WHEN id % 50 = 0 THEN 'revoked' ELSE 'granted' END, 'test', now() FROM contacts"
        )
        cursor.execute("SELECT count(*) FROM contacts WHERE id % 50 <> 0")
        eligible = int(cursor.fetchone()[0])  # type: ignore[index]
        raw.commit()
    finally:
        raw.close()
    engine.dispose()
    return eligible


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "journey",
            "work",
            "broadcast_kill",
            "--reconcile-after",
            "0 seconds",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def wait_ready(worker: subprocess.Popen[str], log: io.StringIO) -> None:
    assert worker.stdout is not None
    for line in worker.stdout:
        log.write(line)
        if line.strip() == "ready":
            return
    raise AssertionError(f"worker ended before it was ready:\n{log.getvalue()}")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_broadcast_survives_kill_9(
    postgres_url: str, simulator: SendGridSimulator, tmp_path: Path
) -> None:
    eligible = load_contacts(postgres_url, CONTACTS)
    settings = Settings(
        database_url=postgres_url, quiet_hours="off", frequency_cap="off", secret_key="kill"
    )
    db = make_engine(postgres_url)
    engine = JourneyEngine(db=db, settings=settings)
    version = engine.register(load_text(JOURNEY, source="kill.yaml"))
    enrolled = engine.enroll_select(
        version,
        select(Contact.id.label("contact_id"), literal("broadcast").label("entry_key")),
    )
    assert enrolled == CONTACTS

    env = {
        **os.environ,
        "TIDINGS_DATABASE_URL": postgres_url,
        "TIDINGS_EMAIL_CHANNEL": "sendgrid",
        "TIDINGS_SENDGRID_HOST": simulator.url,
        "TIDINGS_SENDGRID_API_KEY": "SG.kill",
        "TIDINGS_QUIET_HOURS": "off",
        "TIDINGS_FREQUENCY_CAP": "off",
        "TIDINGS_SECRET_KEY": "kill",
        "TIDINGS_SEND_BACKOFF_BASE": "0.01",
        "TIDINGS_LEASE_SECONDS": str(LEASE),
        "COLUMNS": "200",
        "PYTHONUNBUFFERED": "1",
    }
    rng = random.Random(20261123)
    logs: list[io.StringIO] = []
    kills = 0
    while kills < KILLS:
        log = io.StringIO()
        logs.append(log)
        worker = start_worker(env)
        wait_ready(worker, log)
        if kills % 2 == 0:  # anywhere: reconciling, in a tick's transaction, sending
            time.sleep(rng.uniform(0.05, 1.5))
        else:  # mid-batch, after the provider accepted a random number more messages
            target = len(simulator.processed) + rng.randint(1, 2500)
            deadline = time.monotonic() + 120
            while (
                len(simulator.processed) < target
                and worker.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.002)
        if worker.poll() is not None:  # finished before the kill: the broadcast is done
            break
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        time.sleep(LEASE)  # the dead worker's lease runs out; the next one reconciles its rows
        assert worker.stdout is not None
        log.write(worker.stdout.read())
        kills += 1
    final = start_worker(env)
    out, _ = final.communicate(timeout=1200)
    logs.append(io.StringIO(out))
    assert final.returncode == 0, out

    counts = Counter(p.custom_args["tidings_message_id"] for p in simulator.processed)
    twice = {mid: n for mid, n in counts.items() if n > 1}
    with Session(db) as session:
        statuses: dict[str, int] = {
            status: n
            for status, n in session.execute(
                select(Message.status, func.count()).group_by(Message.status)
            )
        }
        sent_ids = {
            str(i) for i in session.scalars(select(Message.id).where(Message.status == "sent"))
        }
    reconciled = sum(
        int(part.split("=")[1])
        for log in logs
        for line in log.getvalue().splitlines()
        if line.startswith("reconciled:")
        for part in line.split()[1:3]
    )
    print(
        f"\n{kills} kills; {reconciled} messages needed reconciliation; "
        f"{len(simulator.processed)} accepted by the provider; statuses {statuses}"
    )
    assert kills >= KILLS
    assert not twice, f"sent twice: {list(twice)[:10]}"
    assert len(counts) == eligible
    assert set(counts) == sent_ids
    assert statuses == {"sent": eligible, "held": CONTACTS - eligible}

"""Faults during a broadcast: a provider storm (5xx, 429, answers lost to timeouts), Redis
restarted, PostgreSQL connections dropped. After each, once the crashed worker's lease has run
out and a worker has reconciled and finished, every contact got exactly one message at the
SendGrid simulator and every row is `sent`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.journeys.test_engine import T0, add_contacts, people
from tests.simulators.sendgrid import SendGridSimulator
from tidings.config import Settings
from tidings.crm.models import Message
from tidings.journeys.loader import load_text
from tidings.journeys.reconcile import reconcile
from tidings.journeys.running import work
from tidings.journeys.runtime import Runtime

JOURNEY = "name: storm\ntrigger: {type: api}\nsteps:\n  - {id: a, type: email, template: welcome}\n"
LEASE = 1.0
QUIET = Console(quiet=True)


def runtime(url: str, sim: SendGridSimulator, tmp_path: Path, **settings: object) -> Runtime:
    built = Runtime.from_settings(
        Settings(
            database_url=url,
            email_channel="sendgrid",
            sendgrid_host=sim.url,
            sendgrid_api_key=sim.api_key,
            send_backoff_base=0.01,
            secret_key="faults",
            frequency_cap="off",
            quiet_hours="off",
            lease_seconds=LEASE,
            outbox_dir=tmp_path / "outbox",
            **settings,  # type: ignore[arg-type]
        )
    )
    built.engine.register(load_text(JOURNEY, source="storm.yaml"))
    return built


def enrol(built: Runtime, n: int) -> None:
    ids = add_contacts(built.db, people(n))
    version = built.engine.versions("storm")[-1]
    built.engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)


def in_thread(target: object) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:  # a crash of the worker, inspected by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def recover_and_check(built: Runtime, sim: SendGridSimulator, n: int) -> None:
    """What ops (or the next tick) do after a crash: wait out the lease, reconcile, finish."""
    time.sleep(LEASE + 0.2)
    reconcile(built, older_than=timedelta(0))
    work(built, "storm", reconcile_after=timedelta(0), batch_size=20, report=QUIET)
    counts = Counter(p.custom_args["tidings_message_id"] for p in sim.processed)
    assert max(counts.values()) == 1, [m for m, c in counts.items() if c > 1][:10]
    assert len(counts) == n
    with Session(built.db) as session:
        statuses = {
            s: c
            for s, c in session.execute(
                select(Message.status, func.count()).group_by(Message.status)
            )
        }
    assert statuses == {"sent": n}


def test_provider_storm_with_lost_answers(
    postgres_url: str, sendgrid_sim: SendGridSimulator, tmp_path: Path
) -> None:
    built = runtime(postgres_url, sendgrid_sim, tmp_path, sendgrid_timeout=0.5)
    enrol(built, 120)
    sendgrid_sim.fail_next(15, status=500)
    sendgrid_sim.fail_next(10, status=429, retry_after=0.2)
    sendgrid_sim.hang_after_accept(4, seconds=1.5)  # accepted, answer lost to the timeout
    summary = work(built, "storm", reconcile_after=timedelta(0), batch_size=20, report=QUIET)
    assert summary["retry"] >= 4  # the lost answers: in doubt, left in flight
    recover_and_check(built, sendgrid_sim, 120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[tuple[str, object]]:
    """A Redis of this test's own, so it can be killed and restarted."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL)]

    def restart() -> None:
        procs[-1].kill()
        procs[-1].wait()
        time.sleep(1.0)  # the broadcast goes on without it meanwhile
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))

    time.sleep(0.3)
    try:
        yield f"redis://127.0.0.1:{port}/0", restart
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_redis_restarted_mid_broadcast(
    postgres_url: str,
    sendgrid_sim: SendGridSimulator,
    tmp_path: Path,
    private_redis: tuple[str, object],
) -> None:
    url, restart = private_redis
    built = runtime(
        postgres_url, sendgrid_sim, tmp_path, redis_url=url, rate_limits={"sendgrid": 60}
    )
    enrol(built, 150)  # 2.5 s at the shared rate
    thread, errors = in_thread(
        lambda: work(built, "storm", reconcile_after=timedelta(0), batch_size=20, report=QUIET)
    )
    time.sleep(0.8)
    restart()  # type: ignore[operator]
    thread.join(120)
    assert not errors, errors  # the limiter waited for Redis; the worker did not crash
    assert 0 < len(sendgrid_sim.processed) <= 150
    recover_and_check(built, sendgrid_sim, 150)


def test_postgres_connections_dropped_mid_batch(
    postgres_url: str, sendgrid_sim: SendGridSimulator, tmp_path: Path
) -> None:
    built = runtime(postgres_url, sendgrid_sim, tmp_path, rate_limits={"sendgrid": 80})
    enrol(built, 200)
    thread, errors = in_thread(
        lambda: work(built, "storm", reconcile_after=timedelta(0), batch_size=20, report=QUIET)
    )
    deadline = time.monotonic() + 30
    while len(sendgrid_sim.processed) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    database = make_url(postgres_url).database
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # what a failover or a network cut does to the worker
        dropped = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).scalar()
    admin.dispose()
    thread.join(120)
    assert dropped, "the worker had no connection to drop"
    assert len(sendgrid_sim.processed) < 200 or not errors  # it crashed mid-way, or recovered
    built.db.dispose()  # a restarted worker starts with fresh connections
    recover_and_check(built, sendgrid_sim, 200)

"""Prefect flows that run journeys: the tick, a broadcast cut into chunks, and posted events.

Thin wiring over ``journeys`` (STYLE.md 7): a task carries a chunk of work (a journey's due
enrollments, or a contact-id range of a broadcast), never one message, because a task run costs
about 10 ms of orchestration here. Tasks are not cached (they send), and retry only on
retryable errors.

    prefect deploy --all                      # journey-tick every minute, see prefect.yaml
    python -m tidings.flows.journeys tick     # one tick now, in an ephemeral Prefect run
"""

from __future__ import annotations

import sys
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from tidings.errors import RetryableError


def _retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a task only when it failed with a retryable error (429, 5xx, timeouts)."""
    try:
        state.result()
    except RetryableError:
        return True
    except Exception:
        return False
    return False


@lru_cache(maxsize=1)
def runtime() -> Any:
    """One runtime per worker process (engine, renderer, channels), journeys registered."""
    from tidings.journeys.runtime import Runtime

    built = Runtime.from_settings()
    built.load_journeys()
    return built


def _when(value: str | None) -> datetime | None:
    """An ISO time parameter (no offset: UTC)."""
    from tidings.crm.types import parse_time

    return parse_time(value) if value else None


@task(
    name="advance",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_condition_fn=_retryable,
)
def advance(name: str, now: str | None = None) -> dict[str, Any]:
    """Enrol (segment/schedule triggers), advance due enrollments and send, for one journey."""
    from tidings.journeys.running import tick_all

    return tick_all(runtime(), names=[name], now=_when(now))[0]


@flow(name="journey-tick", log_prints=True)
def journey_tick(now: str | None = None) -> list[dict[str, Any]]:
    """Every minute: one task per active journey, run concurrently on the task runner."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tidings.crm.models import Journey

    with Session(runtime().db) as session:
        names = list(
            session.scalars(select(Journey.name).where(Journey.status == "active").distinct())
        )
    futures = advance.map(names, now=now)
    return [future.result() for future in futures]


@task(
    name="broadcast-chunk",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_condition_fn=_retryable,
)
def broadcast_chunk(name: str, low: int, high: int, now: str) -> dict[str, Any]:
    """Advance and send the due enrollments of contacts ``low <= id < high``."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tidings.crm.models import Enrollment, Message
    from tidings.journeys.engine import TickStats
    from tidings.journeys.running import summary

    rt = runtime()
    moment = datetime.fromisoformat(now)
    versions = {v.id: v for v in rt.engine.versions(name) if v.status == "active"}
    total = TickStats()
    while True:
        with Session(rt.db) as session:
            ids = list(
                session.scalars(
                    select(Enrollment.id)
                    .where(
                        Enrollment.journey_id.in_(versions),
                        Enrollment.status == "active",
                        Enrollment.next_due_at <= moment,
                        Enrollment.contact_id >= low,
                        Enrollment.contact_id < high,
                    )
                    .limit(1000)
                )
            )
        if not ids:
            break
        total.add(rt.engine.tick_batch(versions, now=moment, batch_size=len(ids), only=ids))
    with Session(rt.db) as session:
        queued = list(
            session.scalars(
                select(Message.id).where(
                    Message.journey_id.in_(versions),
                    Message.status == "queued",
                    Message.contact_id >= low,
                    Message.contact_id < high,
                )
            )
        )
    sent = rt.dispatcher.dispatch(now=moment, only=queued)
    return summary(name, total, sent)


CHUNK_THREADS = 2  # chunks a flow run sends at once: each holds database connections
SHARE_DEPLOYMENT = "broadcast-share/broadcast-share"
TOTALS = ("processed", "messages", "sent", "failed", "retry")


def _sum(results: list[dict[str, Any]]) -> dict[str, int]:
    return {key: sum(int(r.get(key, 0)) for r in results) for key in TOTALS}


@flow(
    name="broadcast-share",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=CHUNK_THREADS),  # type: ignore[arg-type]
)
def broadcast_share(name: str, bounds: list[int], chunk_size: int, now: str) -> dict[str, Any]:
    """Advance and send the chunks of contact ids starting at ``bounds`` (a share of a
    broadcast), ``CHUNK_THREADS`` at a time."""
    futures = broadcast_chunk.map(name, bounds, [b + chunk_size for b in bounds], now)
    return _sum([future.result() for future in futures])


@flow(name="broadcast", log_prints=True)
def broadcast(
    name: str, chunk_size: int = 5000, shares: int = 1, now: str | None = None
) -> dict[str, Any]:
    """Enrol a segment or scheduled journey's audience, cut it into chunks of contact ids, and
    send them: with ``shares`` > 1 (and deployed) as that many ``broadcast-share`` flow runs,
    which the work pool's workers pick up on any machine; otherwise in this flow run."""
    from prefect.runtime import deployment
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from tidings.crm.models import Enrollment, Message
    from tidings.crm.types import utcnow
    from tidings.journeys.running import enroll

    rt = runtime()
    moment = _when(now) or utcnow()
    versions = rt.engine.versions(name)
    enrolled = enroll(rt, versions[-1], now=moment)
    with Session(rt.db) as session:
        low, high = session.execute(
            select(func.min(Enrollment.contact_id), func.max(Enrollment.contact_id)).where(
                Enrollment.journey_id.in_([v.id for v in versions]), Enrollment.status == "active"
            )
        ).one()
    totals: dict[str, Any] = {"journey": name, "enrolled": enrolled, "chunks": 0, "shares": 0}
    if low is None:
        return totals
    bounds = list(range(low, high + 1, chunk_size))
    size = -(-len(bounds) // max(1, shares))
    parts = [bounds[i : i + size] for i in range(0, len(bounds), size)]
    totals.update(chunks=len(bounds), shares=len(parts))
    if len(parts) > 1 and deployment.id is not None:
        totals["share_runs"] = _fan_out(name, parts, chunk_size, moment.isoformat())
        with Session(rt.db) as session:  # the shares ran elsewhere: what they did is stored
            by_status: dict[str, int] = {
                status: n
                for status, n in session.execute(
                    select(Message.status, func.count())
                    .where(
                        Message.journey_id.in_([v.id for v in versions]),
                        Message.created_at >= moment,
                    )
                    .group_by(Message.status)
                )
            }
        return {**totals, "sent": by_status.get("sent", 0), "failed": by_status.get("failed", 0)}
    results = [broadcast_share(name, part, chunk_size, moment.isoformat()) for part in parts]
    return {**totals, **_sum(results)}


def _fan_out(name: str, parts: list[list[int]], chunk_size: int, now: str) -> list[str]:
    """One ``broadcast-share`` flow run per part, on any worker; waits for all of them and
    returns their names."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    runs: list[Any] = [
        run_deployment(
            SHARE_DEPLOYMENT,
            parameters={"name": name, "bounds": part, "chunk_size": chunk_size, "now": now},
            timeout=0,  # start them all, then wait
        )
        for part in parts
    ]
    with get_client(sync_client=True) as client:
        while True:
            done = [client.read_flow_run(run.id) for run in runs]
            if all(r.state is not None and r.state.is_final() for r in done):
                break
            time.sleep(1)
    failed = [r.name for r in done if r.state is None or not r.state.is_completed()]
    if failed:
        raise RuntimeError(f"broadcast shares did not complete: {', '.join(failed)}")
    return [r.name for r in done]


@flow(name="journey-event", log_prints=True)
def journey_event(events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Record a batch of events and run the journeys they trigger (batch feeds). Each event is
    ``{"contact": ID, "name": NAME, "properties": {...}, "key": IDEMPOTENCY_KEY}`` (properties
    and key optional). The API and CLI do not wait for a flow: a transactional send cannot wait
    ~1 s for a run to start (journeys.triggers)."""
    from tidings.errors import InputError
    from tidings.journeys.running import find_contact
    from tidings.journeys.triggers import post_event

    rt = runtime()
    totals: dict[str, Any] = {"events": 0, "duplicates": 0, "sent": 0, "enrolled": {}}
    for index, event in enumerate(events or []):
        unknown = set(event) - {"contact", "name", "properties", "key"}
        if unknown or not event.get("contact") or not event.get("name"):
            raise InputError(
                f"events[{index}]: needs 'contact' and 'name'"
                + (f"; unknown keys {sorted(unknown)}" if unknown else ""),
                hint='e.g. {"contact": "C0002", "name": "order.shipped", "properties": {}}',
            )
        outcome = post_event(
            rt,
            contact_id=find_contact(rt, str(event["contact"])),
            name=str(event["name"]),
            properties=event.get("properties"),
            idempotency_key=event.get("key"),
            source="flow",
        )
        totals["events"] += 1
        totals["duplicates"] += int(outcome.duplicate)
        totals["sent"] += outcome.sent
        for journey, ids in outcome.enrollments.items():
            totals["enrolled"][journey] = totals["enrolled"].get(journey, 0) + len(ids)
    return totals


@flow(name="journey-run", log_prints=True)
def journey_run(file: str, now: str | None = None) -> dict[str, Any]:
    """Register a journey file, enrol and advance it (as of ``now``), and send (`tidings journey
    run`)."""
    from tidings.journeys.running import run_once

    return run_once(runtime(), Path(file), now=_when(now))


def run_journey(file: str, now: str | None = None) -> dict[str, Any]:
    """Run ``journey_run`` as a flow run (on the configured server, or a temporary one)."""
    return journey_run(file, now)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "tick"
    if command == "tick":
        print(journey_tick())
    elif command == "broadcast":
        print(broadcast(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m tidings.flows.journeys tick | broadcast NAME")

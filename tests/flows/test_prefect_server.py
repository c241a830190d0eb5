"""The scale-out path for real: a Prefect server, a process work pool and worker, `prefect deploy
--all` on a project, every deployment triggered, the every-minute schedule seen to run.

Everything goes through the `prefect` command line on loopback, as the README tells ops to do;
the worker starts in a folder that is not the project, so the flows find their content only
through the deployments' pull step. The store is PostgreSQL, shared by the worker's flow runs
and this test.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.conftest import FIXTURE_PROJECT
from tests.prefect_ops import (
    PREFECT,
    api,
    environment,
    prefect,
    run_id,
    spawn,
    start_server,
    stop,
    wait_for,
)
from tidings.crm.db import make_engine
from tidings.crm.importer import IMPORTERS
from tidings.crm.models import Enrollment, Event, Message

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = {
    "journey-tick/journey-tick",
    "broadcast/broadcast",
    "broadcast-share/broadcast-share",
    "journey-event/journey-event",
    "event-ingest/event-ingest",
    "train-and-score/scores-weekly",
}


@pytest.fixture
def prefect_env(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    env = environment(
        os.environ,
        home=tmp_path / "prefect-home",
        TIDINGS_DATABASE_URL=postgres_url,
        TIDINGS_REDIS_URL=redis_url,
        TIDINGS_QUIET_HOURS="off",
        TIDINGS_SECRET_KEY="prefect-test",
    )
    server = start_server(env, tmp_path / "server.log")
    try:
        yield env
    finally:
        stop(server)
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert "Can't evaluate bulk DML" not in log, log[-3000:]


def run_deployment(
    env: dict[str, str], deployment: str, project: Path, **params: Any
) -> dict[str, Any]:
    args = ["deployment", "run", deployment]
    if params:
        args += ["--params", json.dumps(params)]
    return wait_for(env, run_id(prefect(env, *args, cwd=project)))


@pytest.mark.slow
def test_deploy_all_trigger_each_and_the_schedule_runs(
    prefect_env: dict[str, str], tmp_path: Path, postgres_url: str
) -> None:
    env = prefect_env
    project = tmp_path / "shop"
    shutil.copytree(FIXTURE_PROJECT, project)
    db = make_engine(postgres_url)
    for kind in ("contacts", "events", "orders"):  # sign-ups imported now: "new" for welcome
        IMPORTERS[kind](ROOT / "data" / "sample" / f"{kind}.csv", engine=db)

    prefect(env, "work-pool", "create", "tidings", "--type", "process", cwd=project)
    deployed = prefect(env | {"PWD": str(project)}, "deploy", "--all", cwd=project)
    assert deployed.count("successfully created") == len(DEPLOYMENTS), deployed
    listed = prefect(env, "deployment", "ls", cwd=project)
    for name in DEPLOYMENTS:
        assert name in listed, listed
    pulled = api(env, "/deployments/filter", {})
    assert {
        d["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
        for d in pulled
    } == {str(project)}

    elsewhere = tmp_path / "worker-home"  # not the project: content comes via the pull step
    elsewhere.mkdir()
    worker = spawn(
        [PREFECT, "worker", "start", "--pool", "tidings", "--type", "process"],
        env,
        elsewhere,
        tmp_path / "worker.log",
    )
    try:
        tick = run_deployment(env, "journey-tick/journey-tick", project)
        assert tick["state_type"] == "COMPLETED", tick["state"]
        with Session(db) as session:
            enrolled = session.scalar(select(func.count()).select_from(Enrollment))
            sent = session.scalar(
                select(func.count()).select_from(Message).where(Message.status == "sent")
            )
        assert enrolled and enrolled > 100  # the welcome journey's new sign-ups
        assert sent and sent > 50
        assert len(list((project / "outbox").glob("*.eml"))) == sent

        event = {
            "contact": "C0002",
            "name": "order.shipped",
            "key": "prefect-order-1",
            "properties": {"order": {"number": "1", "tracking_url": "https://t.example/1"}},
        }
        posted = run_deployment(env, "journey-event/journey-event", project, events=[event])
        assert posted["state_type"] == "COMPLETED", posted["state"]
        with Session(db) as session:
            assert session.scalar(
                select(func.count()).select_from(Event).where(Event.name == "order.shipped")
            )
            sms = session.scalar(
                select(func.count()).select_from(Message).where(Message.channel == "sms")
            )
        assert sms == 1

        for name in ("broadcast/broadcast", "event-ingest/event-ingest"):
            run = run_deployment(env, name, project)  # the defaults in prefect.yaml are valid
            assert run["state_type"] == "COMPLETED", (name, run["state"])
        # a broadcast cut into 2 shares: two broadcast-share flow runs, on any worker
        shared = run_deployment(
            env, "broadcast/broadcast", project, name="welcome", chunk_size=50, shares=2
        )
        assert shared["state_type"] == "COMPLETED", shared["state"]
        share_id = next(
            d["id"] for d in api(env, "/deployments/filter", {}) if d["name"] == "broadcast-share"
        )
        share_runs = api(env, "/flow_runs/filter", {"deployments": {"id": {"any_": [share_id]}}})
        assert [r["state_type"] for r in share_runs] == ["COMPLETED", "COMPLETED"]
        scores = run_deployment(env, "train-and-score/scores-weekly", project)
        assert scores["state_type"] == "COMPLETED", scores["state"]
        assert list((project / "models").iterdir())

        # The every-minute schedule: the server creates runs ahead, and the worker runs one.
        tick_id = next(
            d["id"] for d in api(env, "/deployments/filter", {}) if d["name"] == "journey-tick"
        )
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            runs = api(
                env,
                "/flow_runs/filter",
                {"deployments": {"id": {"any_": [tick_id]}}, "limit": 200},
            )
            done = [r for r in runs if r["auto_scheduled"] and r["state_type"] == "COMPLETED"]
            if done:
                break
            time.sleep(3)
        else:
            pytest.fail(f"no scheduled journey-tick run completed: {[r['state'] for r in runs]}")
    finally:
        stop(worker)
        print((tmp_path / "worker.log").read_text(errors="replace")[-5000:])

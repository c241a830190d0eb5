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
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.conftest import FIXTURE_PROJECT
from tidings.crm.db import make_engine
from tidings.crm.importer import IMPORTERS
from tidings.crm.models import Enrollment, Event, Message

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = {
    "journey-tick/journey-tick",
    "broadcast/broadcast",
    "broadcast-share/broadcast-share",
    "journey-event/journey-event",
    "event-ingest/event-ingest",
    "train-and-score/scores-weekly",
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to the process group (a worker ignores SIGTERM while its server is gone)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


@pytest.fixture
def prefect_env(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TIDINGS_PROJECT"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        DO_NOT_TRACK="1",
        COLUMNS="250",  # `prefect deployment ls` cuts names to the terminal width
        TIDINGS_DATABASE_URL=postgres_url,
        TIDINGS_REDIS_URL=redis_url,
        TIDINGS_QUIET_HOURS="off",
        TIDINGS_SECRET_KEY="prefect-test",
    )
    server_log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the Prefect server did not answer /api/health within 120 s")
        yield env
    finally:
        stop(server)
        server_log.close()
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert "Can't evaluate bulk DML" not in log, log[-3000:]


def prefect(env: dict[str, str], *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def api(env: dict[str, str], path: str, body: dict[str, Any] | None = None) -> Any:
    url = env["PREFECT_API_URL"] + path
    response = httpx.post(url, json=body or {}) if body is not None else httpx.get(url)
    response.raise_for_status()
    return response.json()


def run_deployment(
    env: dict[str, str], deployment: str, project: Path, **params: Any
) -> dict[str, Any]:
    args = ["deployment", "run", deployment]
    if params:
        args += ["--params", json.dumps(params)]
    out = prefect(env, *args, cwd=project)
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert run_id, out
    return wait_for(env, run_id.group(1))


def wait_for(env: dict[str, str], run_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = api(env, f"/flow_runs/{run_id}")
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run_id} did not finish in {timeout} s")


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

    worker_log = (tmp_path / "worker.log").open("wb")
    elsewhere = tmp_path / "worker-home"  # not the project: content comes via the pull step
    elsewhere.mkdir()
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "tidings", "--type", "process"],
        env=env,
        cwd=elsewhere,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
        worker_log.close()
        print((tmp_path / "worker.log").read_text(errors="replace")[-5000:])

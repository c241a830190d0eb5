"""A broadcast through the Prefect deployments, with 1, 2 and 4 worker processes.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/scale.py --contacts 300000
    .venv/bin/python benchmarks/scale.py --contacts 20000 --workers 1,2 --stock

One `prefect server` on a free loopback port, a process work pool, `prefect --no-prompt deploy
--all` of a temporary copy of tests/fixtures/project (its flows/ and prefect.yaml, the every-minute
schedules taken out so no tick or ingest runs take a worker's slot) with three files added: a
segment of every reachable contact, a one-email journey on it (the 25 KB welcome newsletter) and
`flows/scale_flows.py` with two deployments:

* `broadcast-fanout` (work queue `control`, its own worker): what `broadcast` does first (enrol
  the audience, cut contact ids into chunks), then one `broadcast-share` flow run per worker
  through `run_deployment`, each with its share of the chunks; waits for them.
* `broadcast-share` (queue `default`): tidings' own `broadcast_chunk` task mapped over its chunks
  on a thread pool of `--threads`.

Each of the W share workers is `prefect worker start --pool tidings --work-queue default --limit
1`, so each takes one share: W flow-run processes on W workers, as W machines would run them.
The stock `broadcast` deployment maps every chunk onto the thread pool of its one flow run, so
it runs in one process whatever the number of workers; `--stock` measures it once (1 worker).

Per run: a fresh PostgreSQL database with N contacts COPY'd in (email consent granted), a fresh
SendGrid simulator in its own process (it counts each `tidings_message_id` it accepts; nothing
else kept), the shared rate limit in Redis (`--rate-limit` per second for `sendgrid`, high enough
not to bind: every send still takes its token from the one Redis bucket). Timed from the trigger
until the API reports the flow run COMPLETED; then asserted: `sent` messages in the store equal
the eligible contacts, nothing else in `messages`, and the simulator accepted each message id
exactly once. CPU is sampled from /proc once a second and split into the share workers (their
flow-run processes included), PostgreSQL (backends of this database and the background
processes), the simulator, Redis, Prefect (server, control worker, fan-out run) and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.databases import Database  # noqa: E402
from benchmarks.journey import load  # noqa: E402
from tests.prefect_ops import (  # noqa: E402
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

FIXTURE = ROOT / "tests" / "fixtures" / "project"
JOURNEY = "bench_broadcast"

SEGMENT_YAML = """\
name: bench_everyone
description: Every contact with an email address (benchmarks/scale.py).
rule: {reachable: email}
"""
JOURNEY_YAML = f"""\
name: {JOURNEY}
description: One newsletter to everyone (benchmarks/scale.py).
trigger: {{type: segment, segment: bench_everyone}}
settings: {{reentry: never}}
steps:
  - {{id: news, type: email, template: welcome}}
"""
FLOWS = '''\
"""Broadcast fanned out over work-pool workers: one flow run per share of the chunks."""

import time
from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.task_runners import ThreadPoolTaskRunner

from tidings.flows.journeys import broadcast_chunk, runtime


@flow(name="broadcast-share", task_runner=ThreadPoolTaskRunner(max_workers={threads}))
def broadcast_share(name: str, bounds: list[int], chunk_size: int, now: str) -> dict[str, Any]:
    futures = broadcast_chunk.map(name, bounds, [b + chunk_size for b in bounds], now)
    results = [future.result() for future in futures]
    return {{k: sum(r.get(k, 0) for r in results) for k in ("processed", "sent", "failed")}}


@flow(name="broadcast-fanout")
def broadcast_fanout(name: str, shares: int = 1, chunk_size: int = 5000) -> dict[str, Any]:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from tidings.crm.models import Enrollment
    from tidings.crm.types import utcnow
    from tidings.journeys.running import enroll

    rt = runtime()
    moment = utcnow()
    versions = rt.engine.versions(name)
    enrolled = enroll(rt, versions[-1], now=moment)
    with Session(rt.db) as session:
        low, high = session.execute(
            select(func.min(Enrollment.contact_id), func.max(Enrollment.contact_id)).where(
                Enrollment.journey_id.in_([v.id for v in versions]),
                Enrollment.status == "active",
            )
        ).one()
    bounds = list(range(low, high + 1, chunk_size))
    size = -(-len(bounds) // shares)
    runs = [
        run_deployment(
            "broadcast-share/broadcast-share",
            parameters={{
                "name": name,
                "bounds": bounds[i : i + size],
                "chunk_size": chunk_size,
                "now": moment.isoformat(),
            }},
            timeout=0,
        )
        for i in range(0, len(bounds), size)
    ]
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(run.id).state for run in runs]
            if all(state is not None and state.is_final() for state in states):
                break
            time.sleep(1)
    bad = [s.type.value for s in states if s is not None and not s.is_completed()]
    if bad:
        raise RuntimeError(f"share runs ended {{bad}}")
    return {{"enrolled": enrolled, "chunks": len(bounds), "shares": [str(r.id) for r in runs]}}
'''
DEPLOYMENTS = [
    {
        "name": "broadcast-fanout",
        "description": "Enrol, then one broadcast-share flow run per worker (scale benchmark).",
        "entrypoint": "flows/scale_flows.py:broadcast_fanout",
        "parameters": {"name": JOURNEY},
        "work_pool": {"name": "tidings", "work_queue_name": "control"},
    },
    {
        "name": "broadcast-share",
        "description": "Send a share of a broadcast's contact-id chunks (scale benchmark).",
        "entrypoint": "flows/scale_flows.py:broadcast_share",
        "parameters": {},
        "work_pool": {"name": "tidings", "work_queue_name": "default"},
    },
]
SIMULATOR = """
import json, sys, threading
sys.path.insert(0, {root!r})
from tests.simulators.http import Reply
from tests.simulators.sendgrid import SendGridSimulator

class Counting(SendGridSimulator):
    # answers like SendGrid, keeps nothing but each accepted tidings_message_id (and repeats)
    seen = set()
    repeats = 0

    def handle(self, request):
        if request.path == "/bench/stats":
            with self.lock:
                return Reply(200, {{"unique": len(self.seen), "duplicates": self.repeats}})
        reply = super().handle(request)
        if reply.status == 202:
            payload = request.parsed
            for p in payload["personalizations"]:
                args = {{**payload.get("custom_args", {{}}), **p.get("custom_args", {{}})}}
                key = args.get("tidings_message_id")
                with self.lock:
                    if key in self.seen:
                        Counting.repeats += 1
                    else:
                        self.seen.add(key)
        return reply

sim = Counting(api_key="SG.bench", keep=False).start()
print(sim.port, flush=True)
sys.stdin.read()
"""


def make_project(base: Path, threads: int) -> Path:
    """A copy of the fixture project with the bench journey, its flows and no schedules."""
    project = base / "shop"
    shutil.copytree(FIXTURE, project)
    (project / "segments" / "bench_everyone.yaml").write_text(SEGMENT_YAML)
    (project / "journeys" / f"{JOURNEY}.yaml").write_text(JOURNEY_YAML)
    (project / "flows" / "scale_flows.py").write_text(FLOWS.format(threads=threads))
    spec = yaml.safe_load((project / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        deployment.pop("schedules", None)  # no tick or ingest run may take a share's slot
    spec["deployments"] += DEPLOYMENTS
    (project / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return project


def start_simulator() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SIMULATOR.format(root=str(ROOT))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


# -- CPU from /proc ------------------------------------------------------------------------


def proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (comm, ppid, utime + stime in clock ticks) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        close = raw.rfind(")")
        rest = raw[close + 2 :].split()
        table[int(entry)] = (
            raw[raw.find("(") + 1 : close],
            int(rest[1]),
            int(rest[11]) + int(rest[12]),
        )
    return table


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class Sampler:
    """Once a second: CPU ticks by role, from /proc and pg_stat_activity."""

    roots: dict[int, str]  # pid of a process we started -> role of its whole tree
    admin_url: str
    database: str
    ticks: dict[str, int] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Cores used by each role over the run (2.0 = both cores), 'idle' included."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return self.cores

    def _role(self, pid: int, table: dict[int, tuple[str, int, int]], pg: dict[int, str]) -> str:
        if pid in pg:
            return pg[pid]
        seen = pid
        while seen > 1 and seen in table:
            if seen in self.roots:
                return self.roots[seen]
            seen = table[seen][1]
        comm = table[pid][0]
        if comm == "redis-server":
            return "redis"
        if pid == os.getpid():
            return "bench"
        return "other"

    def _run(self) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        query = text(
            "SELECT pid, datname, backend_type FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        )
        previous = proc_table()
        busy0, total0 = machine_ticks()
        started = time.monotonic()
        while not self._stop.wait(1.0):
            with engine.connect() as conn:
                pg = {
                    int(pid): "postgres"
                    for pid, datname, kind in conn.execute(query)
                    if datname == self.database or kind != "client backend"
                }
            table = proc_table()
            postmaster = [
                p for p, (comm, ppid, _) in table.items() if comm == "postgres" and ppid == 1
            ]
            pg.update(dict.fromkeys(postmaster, "postgres"))
            for pid, (_, _, now) in table.items():
                delta = now - previous[pid][2] if pid in previous else now
                if delta:
                    role = self._role(pid, table, pg)
                    self.ticks[role] = self.ticks.get(role, 0) + delta
            previous = table
        engine.dispose()
        busy, total = machine_ticks()
        seconds = time.monotonic() - started
        hz = os.sysconf("SC_CLK_TCK")
        cores = (total - total0) / hz / seconds
        self.cores = {role: t / hz / seconds for role, t in self.ticks.items()}
        self.cores["idle"] = (total - total0 - (busy - busy0)) / hz / seconds
        self.cores["machine"] = cores


# -- one run -------------------------------------------------------------------------------


def store_counts(url: str) -> tuple[int, dict[str, int]]:
    """Eligible contacts (email consent granted) and messages by status."""
    engine = create_engine(make_url(url))
    with engine.connect() as conn:
        eligible = conn.execute(
            text(
                "SELECT count(*) FROM contacts c JOIN consents k ON k.contact_id = c.id "
                "WHERE c.email IS NOT NULL AND k.channel = 'email' AND k.status = 'granted'"
            )
        ).scalar_one()
        statuses = {
            s: int(n)
            for s, n in conn.execute(text("SELECT status, count(*) FROM messages GROUP BY status"))
        }
    engine.dispose()
    return int(eligible), statuses


def wait_workers(env: dict[str, str], names: list[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = api(env, "/work_pools/tidings/workers/filter", {})
        if set(names) <= {w["name"] for w in workers if w["status"] == "ONLINE"}:
            return
        time.sleep(0.5)
    raise SystemExit(f"workers {names} did not come online in 120 s")


def span(runs: list[dict[str, Any]]) -> float:
    from datetime import datetime

    starts = [datetime.fromisoformat(r["start_time"]) for r in runs]
    ends = [datetime.fromisoformat(r["end_time"]) for r in runs]
    return (max(ends) - min(starts)).total_seconds()


def run_once(
    args: argparse.Namespace,
    env: dict[str, str],
    project: Path,
    base: Path,
    server_pid: int,
    workers: int,
    stock: bool,
) -> dict[str, Any]:
    db = Database(args.url)
    url = db.fresh()
    sim, port = start_simulator()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        load(url, args.contacts)
        run_env = env | {
            "TIDINGS_DATABASE_URL": url,
            "TIDINGS_SENDGRID_HOST": f"http://127.0.0.1:{port}",
        }
        home = base / "worker-home"  # not the project: content comes via the pull step
        home.mkdir(exist_ok=True)
        tag = f"{'stock' if stock else 'fanout'}-{workers}"
        worker = [PREFECT, "worker", "start", "--pool", "tidings", "--type", "process"]
        roles = {sim.pid: "simulator", server_pid: "prefect"}
        names = []
        if not stock:
            names.append(f"{tag}-control")
            args_ = [*worker, "--work-queue", "control", "--name", names[-1]]
            control = spawn(args_, run_env, home, base / f"{names[-1]}.log")
            procs.append(control)
            roles[control.pid] = "prefect"
        for n in range(workers):
            names.append(f"{tag}-worker{n}")
            args_ = [*worker, "--work-queue", "default", "--limit", "1", "--name", names[-1]]
            share = spawn(args_, run_env, home, base / f"{names[-1]}.log")
            procs.append(share)
            roles[share.pid] = f"worker{n}"
        wait_workers(env, names)
        deployment = "broadcast/broadcast" if stock else "broadcast-fanout/broadcast-fanout"
        params = {"name": JOURNEY, "chunk_size": args.chunk_size}
        if not stock:
            params["shares"] = workers
        sampler = Sampler(roles, args.url, make_url(url).database or "")
        sampler.start()
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        out = prefect(
            env, "deployment", "run", deployment, "--params", json.dumps(params), cwd=project
        )
        run = wait_for(env, run_id(out), timeout=4 * 3600)
        seconds = time.perf_counter() - start
        cores = sampler.stop()
        if stock and run["state_type"] != "COMPLETED":  # seen at 300k: the pool runs dry
            eligible, statuses = store_counts(url)
            return {"stock": True, "failed": run["state"]["message"], "statuses": statuses}
        assert run["state_type"] == "COMPLETED", run["state"]

        children = api(
            env, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}}
        )
        shares = [r for r in children if r["name"] and r["state_type"]] if not stock else []
        eligible, statuses = store_counts(url)
        stats = httpx.get(f"http://127.0.0.1:{port}/bench/stats").json()
        # what happened, before any speed
        assert eligible == args.contacts, (eligible, args.contacts)
        assert statuses == {"sent": eligible}, f"messages by status {statuses}, eligible {eligible}"
        assert stats == {"unique": eligible, "duplicates": 0}, stats
        if not stock:  # one share run per worker, and each worker did its part
            assert len(shares) == workers, [r["name"] for r in shares]
            used = [cores.get(f"worker{n}", 0.0) for n in range(workers)]
            assert min(used) > 0.25 * sum(used) / workers, used
        return {
            "workers": workers,
            "stock": stock,
            "sent": statuses["sent"],
            "seconds": seconds,
            "send_seconds": span(shares) if shares else None,
            "duplicates": stats["duplicates"],
            "cores": cores,
            "load": (load_before, os.getloadavg()[0]),
        }
    finally:
        for proc in procs:
            stop(proc)
        sim.kill()
        sim.wait()
        db.drop(url)


def report(result: dict[str, Any], first: dict[str, Any] | None) -> str:
    if "failed" in result:
        return f"stock `broadcast` FAILED: {result['failed']}; messages {result['statuses']}"
    rate = result["sent"] / result["seconds"]
    workers = result["workers"]
    cores = result["cores"]
    worker_cores = sum(v for k, v in cores.items() if k.startswith("worker"))
    split = ", ".join(
        f"{name} {value:.2f}"
        for name, value in [
            ("workers", worker_cores),
            ("postgres", cores.get("postgres", 0.0)),
            ("simulator", cores.get("simulator", 0.0)),
            ("redis", cores.get("redis", 0.0)),
            ("prefect", cores.get("prefect", 0.0)),
            ("bench", cores.get("bench", 0.0)),
            ("other", cores.get("other", 0.0)),
            ("idle", cores.get("idle", 0.0)),
        ]
    )
    each = " / ".join(f"{cores.get(f'worker{n}', 0.0):.2f}" for n in range(workers))
    kind = (
        "stock `broadcast` (one flow run, chunks on its thread pool)"
        if result["stock"]
        else "fan-out"
    )
    send = f", send phase {result['send_seconds']:.1f} s" if result["send_seconds"] else ""
    ratio = ""
    if first:
        base = first["sent"] / first["seconds"]
        ratio = f"; x{rate / base:.2f} vs {first['workers']} worker(s)"
    return (
        f"{kind}, {workers} worker(s): {result['sent']:,} sent, 0 duplicates, "
        f"{result['seconds']:.1f} s{send} = {rate:,.0f} msg/s, "
        f"{rate / workers:,.0f} per worker{ratio}\n"
        f"    cores of {cores['machine']:.0f}: {split}; per worker {each}; "
        f"load average {result['load'][0]:.1f} -> {result['load'][1]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2, help="chunks at once per share run")
    parser.add_argument("--rate-limit", type=float, default=20_000, help="sendgrid sends/s, shared")
    parser.add_argument("--stock", action="store_true", help="also the stock broadcast, 1 worker")
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="tidings-scale-"))
    env = environment(
        os.environ,
        home=base / "prefect-home",
        PREFECT_LOGGING_LEVEL="WARNING",
        TIDINGS_REDIS_URL=args.redis,
        TIDINGS_RATE_LIMITS=json.dumps({"sendgrid": args.rate_limit}),
        TIDINGS_EMAIL_CHANNEL="sendgrid",
        TIDINGS_SENDGRID_API_KEY="SG.bench",
        TIDINGS_QUIET_HOURS="off",
        TIDINGS_FREQUENCY_CAP="off",
        TIDINGS_SECRET_KEY="bench",
    )
    project = make_project(base, args.threads)
    server = start_server(env, base / "server.log")
    try:
        prefect(env, "work-pool", "create", "tidings", "--type", "process", cwd=project)
        deployed = prefect(env | {"PWD": str(project)}, "deploy", "--all", cwd=project)
        assert deployed.count("successfully created") == 7, deployed
        print(
            f"{args.contacts:,} contacts, chunks of {args.chunk_size}, {args.threads} chunk "
            f"threads per share run, shared limit sendgrid {args.rate_limit:,.0f}/s in Redis; "
            f"logs in {base}",
            flush=True,
        )
        if args.stock:
            print(
                report(run_once(args, env, project, base, server.pid, 1, stock=True), None),
                flush=True,
            )
        first: dict[str, Any] | None = None
        for workers in [int(w) for w in args.workers.split(",")]:
            result = run_once(args, env, project, base, server.pid, workers, stock=False)
            print(report(result, first), flush=True)
            first = first or result
    finally:
        stop(server)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

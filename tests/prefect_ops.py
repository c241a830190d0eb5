"""Driving a real Prefect server as ops do, through the `prefect` command line and its REST API
on loopback: used by tests/flows/test_prefect_server.py and benchmarks/scale.py.

>>> env = environment(os.environ, home=tmp / "prefect-home")        # doctest: +SKIP
>>> server = start_server(env, tmp / "server.log")                   # doctest: +SKIP
>>> run = wait_for(env, run_id(prefect(env, "deployment", "run", "broadcast/broadcast", cwd=p)))
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

PREFECT = str(Path(sys.executable).with_name("prefect"))
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(base: Mapping[str, str], *, home: Path, **extra: str) -> dict[str, str]:
    """``base`` without any PREFECT_ or TIDINGS_ setting, plus a private Prefect home and API
    on a free port, workers that poll every 2 s, and ``extra``."""
    env = {k: v for k, v in base.items() if not k.startswith(("PREFECT_", "TIDINGS_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        DO_NOT_TRACK="1",
        COLUMNS="250",  # `prefect deployment ls` cuts names to the terminal width
    )
    env.update(extra)
    return env


def spawn(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """A process in its own group (``stop`` signals the group), its output appended to log."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGINT to the process group (a worker ignores SIGTERM while its server is gone, and
    stops its runs on SIGINT), SIGKILL if it is still there after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(20)


def start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`prefect server start` on the port of ``env``'s API URL, once /api/health answers."""
    port = env["PREFECT_API_URL"].split(":")[-1].split("/")[0]
    args = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port]
    server = spawn(args, env, log.parent, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(server)
    raise RuntimeError("the Prefect server did not answer /api/health within 120 s")


def prefect(env: dict[str, str], *args: str, cwd: Path, timeout: float = 300) -> str:
    """`prefect --no-prompt ARGS`; its output, or AssertionError with it when it fails."""
    done = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def api(env: dict[str, str], path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST ``body``) a path of the server's REST API."""
    url = env["PREFECT_API_URL"] + path
    response = httpx.post(url, json=body) if body is not None else httpx.get(url)
    response.raise_for_status()
    return response.json()


def run_id(output: str) -> str:
    """The flow run id `prefect deployment run` printed."""
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert found, output
    return found.group(1)


def wait_for(env: dict[str, str], flow_run: str, timeout: float = 240) -> dict[str, Any]:
    """The flow run once it is in a terminal state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = api(env, f"/flow_runs/{flow_run}")
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(0.5)
    raise TimeoutError(f"flow run {flow_run} did not finish in {timeout} s")

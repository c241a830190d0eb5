"""What the web benchmarks share: the app under uvicorn in its own process, and HTTP clients.

    proc, port = start_app(env={"TIDINGS_DATABASE_URL": url}, cwd=ROOT, workers=2)
    elapsed = run_clients(port, 4, work)   # work(n, conn) posts over one keep-alive connection
    stop_app(proc)

The app is ``tidings serve``'s (``tidings.web.app:create_app``), direct writes (no Redis: the
variable is removed from the environment), on a free loopback port.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the web app exited: see its output above")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the web app did not become ready in {timeout:.0f} s")


def start_app(
    *, env: dict[str, str], cwd: Path, workers: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the web app with ``env`` added to this process's environment; wait until ready."""
    port = free_port()
    full = {**os.environ, **env}
    full.pop("TIDINGS_REDIS_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tidings.web.app:create_app",
            "--factory",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=cwd,
        env=full,
    )
    try:
        wait_ready(port, proc)
    except BaseException:
        stop_app(proc)
        raise
    return proc, port


def stop_app(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(60)


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> int:
    """One POST on a keep-alive connection; the response is read whole; returns the status."""
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def run_clients(
    port: int, clients: int, work: Callable[[int, http.client.HTTPConnection], None]
) -> float:
    """Run ``work(n, connection)`` in ``clients`` threads, each with its own keep-alive
    connection; returns the seconds until the last ended. An exception in any (e.g. an
    unexpected status) stops the benchmark with the first one."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            work(n, conn)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} clients failed, e.g. {errors[0]!r}")
    return elapsed

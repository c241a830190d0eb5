"""A threaded HTTP server on loopback that records every request: the base of the simulators.

Each simulator subclasses ``SimulatorServer`` and answers in ``handle(request)``. Failures are
programmable: ``fail_next(3, status=429, retry_after=1)`` makes the next three requests fail.

>>> with EchoSimulator() as sim:              # doctest: +SKIP
...     urllib.request.urlopen(sim.url + "/x")
...     sim.requests[0].path
'/x'
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


@dataclass
class Recorded:
    """One request as the simulator received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    parsed: Any = None  # JSON or form fields, once the simulator parsed them


@dataclass
class Reply:
    status: int
    body: Any = None  # dict -> JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Failure:
    status: int
    retry_after: float | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(self.path)
        request = Recorded(
            method=self.command,
            path=parts.path,
            query=urllib.parse.parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.server.simulator._dispatch(request)
        data = b""
        if reply.body is not None:
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    simulator: SimulatorServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (killed, timed out) is normal here."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class SimulatorServer:
    """Start with ``start()`` or ``with``; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, *, keep: bool = True) -> None:
        #: False for benchmarks: answer like the provider, remember nothing (flat memory)
        self.keep = keep
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._failures: deque[Failure] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Self:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.simulator = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- programming ----------------------------------------------------------------------
    def fail_next(self, count: int, *, status: int, retry_after: float | None = None) -> None:
        """The next ``count`` requests that pass auth answer ``status`` (429, 500, 503...)."""
        with self.lock:
            self._failures.extend(Failure(status, retry_after) for _ in range(count))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self._failures.clear()

    def _next_failure(self) -> Failure | None:
        with self.lock:
            return self._failures.popleft() if self._failures else None

    def _dispatch(self, request: Recorded) -> Reply:
        if self.keep:
            with self.lock:
                self.requests.append(request)
        return self.handle(request)

    def handle(self, request: Recorded) -> Reply:
        raise NotImplementedError

"""A keep-alive transport for the SendGrid SDK's HTTP layer (``python_http_client``).

The SDK builds a fresh ``urllib`` opener for every call (about 1.9 ms of CPU here, mostly
``build_opener`` and the proxy lookup in ``os.environ``) and opens a new TCP (and TLS)
connection per message. ``KeepAliveClient`` is the SDK's own ``Client`` class with only the
last step replaced: the URL, headers, body encoding, ``Response`` object and error classes
stay the SDK's; the request goes over one persistent ``http.client`` connection per thread.

A connection idle longer than ``max_idle`` is reopened before use (servers close idle ones),
so a reused connection is never found dead after the request went out; if it still breaks
mid-request the error propagates and the adapter reports the message as in doubt instead of
sending it again.

>>> sg = SendGridAPIClient(api_key, host=host)                   # doctest: +SKIP
>>> sg.client = KeepAliveClient(host=host, request_headers=sg._default_headers,  # doctest: +SKIP
...                             version=3)
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.parse
from typing import Any

import python_http_client  # type: ignore[import-untyped]
from python_http_client.exceptions import handle_error  # type: ignore[import-untyped]


class ConnectionPool:
    """One persistent connection per thread to one origin."""

    def __init__(self, origin: str, *, timeout: float, max_idle: float = 4.0) -> None:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.timeout = timeout
        self.max_idle = max_idle
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.opened = 0

    def connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        last: float = getattr(self._local, "last", 0.0)
        if conn is not None and time.monotonic() - last > self.max_idle:
            conn.close()
            conn = None
        if conn is None:
            factory = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = factory(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
                self.opened += 1
        return conn

    def used(self) -> None:
        self._local.last = time.monotonic()

    def discard(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class KeepAliveClient(python_http_client.Client):  # type: ignore[misc]
    """``python_http_client.Client`` whose requests go through a ``ConnectionPool``."""

    def __init__(self, *args: Any, pool: ConnectionPool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = pool or ConnectionPool(self.host, timeout=self.timeout or 10.0)

    def _build_client(self, name: str | None = None) -> KeepAliveClient:
        url_path = [*self._url_path, name] if name else self._url_path
        return KeepAliveClient(
            host=self.host,
            version=self._version,
            request_headers=self.request_headers,
            url_path=url_path,
            append_slash=self.append_slash,
            timeout=self.timeout,
            pool=self.pool,
        )

    def __getattr__(self, name: str) -> Any:
        if name not in self.methods:
            return super().__getattr__(name)
        method = name.upper()

        def http_request(
            request_body: Any = None,
            query_params: dict[str, Any] | None = None,
            request_headers: dict[str, str] | None = None,
            timeout: float | None = None,
            **_: Any,
        ) -> python_http_client.client.Response:
            headers = {**self.request_headers, **(request_headers or {})}
            data = None
            if request_body is not None:
                headers.setdefault("Content-Type", "application/json")
                if headers["Content-Type"] == "application/json":
                    data = json.dumps(request_body).encode()
                else:
                    data = str(request_body).encode()
            url = self._build_url(query_params)
            return self._send(method, url, headers, data, timeout)

        return http_request

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | None,
        timeout: float | None,
    ) -> python_http_client.client.Response:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self.pool.connection()
        if timeout is not None:
            conn.timeout = timeout
        try:
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except BaseException:
            self.pool.discard()
            raise
        self.pool.used()
        if response.will_close:
            self.pool.discard()
        if response.status >= 400:
            error = urllib.error.HTTPError(
                url, response.status, response.reason, response.msg, io.BytesIO(body)
            )
            raise handle_error(error)
        return python_http_client.client.Response(_Read(response, body))


class _Read:
    """What ``python_http_client.Response`` reads from: code, body, headers."""

    def __init__(self, response: http.client.HTTPResponse, body: bytes) -> None:
        self._response = response
        self._body = body

    def getcode(self) -> int:
        return self._response.status

    def read(self) -> bytes:
        return self._body

    def info(self) -> http.client.HTTPMessage:
        return self._response.msg

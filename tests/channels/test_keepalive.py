"""The keep-alive HTTP/1.1 connection under the SendGrid SDK: the request as sent, replies
with a length, chunked or closing, and no header injection."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator

import pytest

from tidings.channels.keepalive import Connection, ConnectionPool

REPLIES = {
    b"/length": b"HTTP/1.1 202 Accepted\r\nX-Message-Id: abc\r\nContent-Length: 2\r\n\r\nok",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
    b"/close": b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbad",
}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                head += chunk
                self.server.reads.append(chunk)  # type: ignore[attr-defined]
            lines = head.split(b"\r\n")
            length = next(
                (int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length")),
                0,
            )
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += self.request.recv(65536)
            self.server.requests.append((lines, body))  # type: ignore[attr-defined]
            path = lines[0].split(b" ")[1]
            self.request.sendall(REPLIES[path])
            if path == b"/close":
                return


@pytest.fixture
def server() -> Iterator[socketserver.ThreadingTCPServer]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.reads, srv.requests = [], []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_request_and_replies_with_length_chunked_and_close(
    server: socketserver.ThreadingTCPServer,
) -> None:
    port = server.server_address[1]
    conn = Connection("127.0.0.1", port, https=False, timeout=5)
    body = b'{"x": "' + b"y" * 20_000 + b'"}'
    reply = conn.request("POST", "/length", {"Content-Type": "application/json"}, body)
    assert (reply.status, reply.body, reply.msg["X-Message-Id"]) == (202, b"ok", "abc")
    lines, received = server.requests[0]  # type: ignore[attr-defined]
    assert received == body
    assert lines[0] == b"POST /length HTTP/1.1" and f"Host: 127.0.0.1:{port}".encode() in lines
    assert b"Content-Length: %d" % len(body) in lines and b"Accept-Encoding: identity" in lines
    chunked = conn.request("GET", "/chunked", {}, None)
    assert (chunked.status, chunked.body, chunked.will_close) == (200, b"abcde", False)
    closing = conn.request("GET", "/close", {}, None)
    assert (closing.status, closing.reason, closing.body, closing.will_close) == (
        400,
        "Bad Request",
        b"bad",
        True,
    )
    assert len(server.requests) == 3  # type: ignore[attr-defined]
    conn.close()


def test_no_header_injection() -> None:
    conn = Connection("127.0.0.1", 9, https=False, timeout=1)
    with pytest.raises(ValueError, match="line break"):
        conn.request("GET", "/", {"Authorization": "Bearer x\r\nX-Evil: 1"}, None)


def test_pool_reopens_after_connection_close(server: socketserver.ThreadingTCPServer) -> None:
    from tidings.channels.keepalive import KeepAliveClient

    pool = ConnectionPool(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    client = KeepAliveClient(host=f"http://127.0.0.1:{server.server_address[1]}", pool=pool)
    assert client._send("GET", client.host + "/length", {}, None, None).status_code == 202
    assert client._send("GET", client.host + "/length", {}, None, None).status_code == 202
    assert pool.opened == 1  # kept alive
    with pytest.raises(Exception) as info:
        client._send("GET", client.host + "/close", {}, None, None)
    assert getattr(info.value, "status_code", None) == 400
    assert client._send("GET", client.host + "/length", {}, None, None).status_code == 202
    assert pool.opened == 2  # the server closed it: a new one
    pool.close()

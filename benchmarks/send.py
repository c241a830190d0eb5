"""Messages per second through the channel adapters to their local simulators.

SendGrid: N pre-rendered emails through ``SendGridChannel.send_batch`` (official SDK, bounded
thread pool) against the ``/v3/mail/send`` simulator running in its own process, and as the
baseline raw ``urllib`` POSTs of the same JSON payloads with the same concurrency in the same
run. The ratio adapter/baseline is what our sequence (rate limit, payload, classification,
results) costs on top of the SDK's HTTP. SMTP (``--smtp``): the same emails through
``SmtpChannel`` (one connection) to the aiosmtpd simulator, against raw ``smtplib.sendmail``
of the same MIME bytes on one connection.

    .venv/bin/python benchmarks/send.py               # 20,000 emails, concurrency 16
    .venv/bin/python benchmarks/send.py -n 5000 --concurrency 32 --smtp

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tidings.channels.base import RetryPolicy  # noqa: E402
from tidings.channels.mime import mime_bytes  # noqa: E402
from tidings.channels.sendgrid import SendGridChannel  # noqa: E402
from tidings.channels.smtp import SmtpChannel  # noqa: E402
from tidings.channels.types import OutboundEmail  # noqa: E402

API_KEY = "SG.bench"
SERVER = """
import sys, threading
sys.path.insert(0, {root!r})
from tests.simulators.{module} import {cls}
sim = {cls}({kwargs}).start()
print(sim.port, flush=True)
sys.stdin.read()
"""


def newsletter(n: int) -> OutboundEmail:
    body = "".join(f"<tr><td>Item {i} for you, reader {n}</td></tr>" for i in range(60))
    return OutboundEmail(
        message_id=str(n),
        idempotency_key=f"bench:{n}",
        to=f"reader{n}@example.com",
        from_email="news@shop.example",
        from_name="Shop News",
        subject=f"Our picks for you, #{n}",
        html=f"<html><body><table>{body}</table></body></html>",
        text=f"Our picks for you, reader {n}",
        headers={
            "List-Unsubscribe": f"<https://t.shop.example/u/{n}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        categories=("newsletter",),
    )


def start_server(module: str, cls: str, kwargs: str) -> tuple[subprocess.Popen[str], int]:
    code = SERVER.format(root=str(ROOT), module=module, cls=cls, kwargs=kwargs)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def bench_sendgrid(emails: list[OutboundEmail], concurrency: int) -> tuple[float, float, float]:
    proc, port = start_server("sendgrid", "SendGridSimulator", f"api_key={API_KEY!r}, keep=False")
    host = f"http://127.0.0.1:{port}"
    try:
        channel = SendGridChannel(
            api_key=API_KEY, host=host, concurrency=concurrency, retry=RetryPolicy()
        )
        payloads = [json.dumps(channel.build_payload(e)).encode() for e in emails]
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

        def raw(data: bytes) -> int:
            request = urllib.request.Request(f"{host}/v3/mail/send", data=data, headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)

        channel.send_batch(emails[:200])  # warm up both sides
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(raw, payloads))
        baseline = len(payloads) / (time.perf_counter() - started)
        assert set(statuses) == {202}, set(statuses)

        started = time.perf_counter()
        results = channel.send_batch(emails)
        adapter = len(emails) / (time.perf_counter() - started)
        assert {r.status for r in results} == {"accepted"}
        channel.close()

        sdk_only = SendGridChannel(
            api_key=API_KEY, host=host, concurrency=concurrency, keepalive=False
        )
        started = time.perf_counter()
        results = sdk_only.send_batch(emails)
        sdk_transport = len(emails) / (time.perf_counter() - started)
        assert {r.status for r in results} == {"accepted"}
        return adapter, baseline, sdk_transport
    finally:
        proc.kill()
        proc.wait()


def bench_smtp(emails: list[OutboundEmail]) -> tuple[float, float]:
    proc, port = start_server("smtp", "SmtpSimulator", "")
    try:
        mimes = [mime_bytes(e) for e in emails]
        conn = smtplib.SMTP("127.0.0.1", port)
        started = time.perf_counter()
        for email, data in zip(emails, mimes, strict=True):
            conn.sendmail(email.from_email, [email.to], data)
        baseline = len(emails) / (time.perf_counter() - started)
        conn.quit()

        with SmtpChannel(host="127.0.0.1", port=port, security="none") as channel:
            started = time.perf_counter()
            results = channel.send_batch(emails)
            adapter = len(emails) / (time.perf_counter() - started)
        assert {r.status for r in results} == {"accepted"}
        return adapter, baseline
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="emails to send")
    parser.add_argument("--concurrency", type=int, default=16, help="SendGrid thread pool")
    parser.add_argument("--smtp", action="store_true", help="also measure the SMTP adapter")
    args = parser.parse_args()
    emails = [newsletter(n) for n in range(args.n)]
    size = len(emails[0].html or "")
    print(f"{args.n} emails ({size} B html), {os.cpu_count()} cores, python {sys.version[:6]}")

    adapter, baseline, sdk_transport = bench_sendgrid(emails, args.concurrency)
    print(
        f"sendgrid  adapter {adapter:8.0f} msg/s   raw urllib {baseline:8.0f} msg/s   "
        f"ratio {adapter / baseline:.2f}   (concurrency {args.concurrency}, keep-alive)"
    )
    print(
        f"sendgrid  adapter {sdk_transport:8.0f} msg/s   raw urllib {baseline:8.0f} msg/s   "
        f"ratio {sdk_transport / baseline:.2f}   (TIDINGS_SENDGRID_KEEPALIVE=false)"
    )
    if args.smtp:
        adapter, baseline = bench_smtp(emails)
        print(
            f"smtp      adapter {adapter:8.0f} msg/s   raw smtplib {baseline:7.0f} msg/s   "
            f"ratio {adapter / baseline:.2f}   (one connection)"
        )


if __name__ == "__main__":
    main()

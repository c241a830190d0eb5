"""Messages per second through the channel adapters to their local simulators.

SendGrid: N pre-rendered emails through ``SendGridChannel.send_batch`` (official SDK, bounded
thread pool) against the ``/v3/mail/send`` simulator running in its own process, and as the
baseline raw ``urllib`` POSTs of the same JSON payloads with the same concurrency in the same
run. The ratio adapter/baseline is what our sequence (rate limit, payload, classification,
results) costs on top of the SDK's HTTP; the goal is the adapter's rate, >= 2,000 msg/s.
SMTP (``--smtp``): the same emails through ``SmtpChannel`` to the aiosmtpd simulator with a
pool of ``--smtp-pool`` connections (``TIDINGS_SMTP_CONNECTIONS``), against raw
``smtplib.sendmail`` of the same MIME bytes from as many threads, each with its own
connection (goal: >= 0.9), and on one connection for reference; each side runs
``--smtp-rounds`` times, in turn, and the medians are compared. Exits 1 when a goal is missed.

    .venv/bin/python benchmarks/send.py               # 20,000 emails, concurrency 16
    .venv/bin/python benchmarks/send.py -n 5000 --concurrency 32 --smtp --smtp-pool 4

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import subprocess
import sys
import threading
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
SENDGRID_GOAL = 2000
SMTP_GOAL = 0.9
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


def bench_smtp(emails: list[OutboundEmail], pool: int, rounds: int) -> tuple[float, float]:
    """(adapter, raw smtplib) msg/s, both with ``pool`` connections: the median of ``rounds``
    runs of each, taken in turn (raw, adapter, raw, ...) against one simulator, so a burst of
    load from elsewhere on the machine falls on both sides rather than on one."""
    proc, port = start_server("smtp", "SmtpSimulator", "")
    try:
        mimes = [mime_bytes(e) for e in emails]
        raws: list[float] = []
        adapters: list[float] = []
        for _ in range(rounds):
            raws.append(raw_smtplib(emails, mimes, port, pool))
            with SmtpChannel(
                host="127.0.0.1", port=port, security="none", connections=pool
            ) as channel:
                started = time.perf_counter()
                results = channel.send_batch(emails)
                adapters.append(len(emails) / (time.perf_counter() - started))
                assert channel.connections_opened <= pool
            assert [r.status for r in results] == ["accepted"] * len(emails)
        return statistics.median(adapters), statistics.median(raws)
    finally:
        proc.kill()
        proc.wait()


def raw_smtplib(emails: list[OutboundEmail], mimes: list[bytes], port: int, pool: int) -> float:
    """msg/s of ``smtplib.sendmail`` of the prepared MIME bytes, ``pool`` threads each with its
    own connection."""
    local = threading.local()
    opened: list[smtplib.SMTP] = []

    def raw(i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = smtplib.SMTP("127.0.0.1", port)
            opened.append(conn)
        refused = conn.sendmail(emails[i].from_email, [emails[i].to], mimes[i])
        assert not refused, refused

    started = time.perf_counter()
    if pool == 1:
        for i in range(len(emails)):
            raw(i)
    else:
        with ThreadPoolExecutor(pool) as threads:
            list(threads.map(raw, range(len(emails))))
    rate = len(emails) / (time.perf_counter() - started)
    for conn in opened:
        conn.quit()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="emails to send")
    parser.add_argument("--concurrency", type=int, default=16, help="SendGrid thread pool")
    parser.add_argument("--smtp", action="store_true", help="also measure the SMTP adapter")
    parser.add_argument("--smtp-pool", type=int, default=4, help="SMTP connections")
    parser.add_argument(
        "--smtp-rounds", type=int, default=3, help="SMTP runs of each side (median)"
    )
    args = parser.parse_args()
    emails = [newsletter(n) for n in range(args.n)]
    size = len(emails[0].html or "")
    print(f"{args.n} emails ({size} B html), {os.cpu_count()} cores, python {sys.version[:6]}")
    missed: list[str] = []

    adapter, baseline, sdk_transport = bench_sendgrid(emails, args.concurrency)
    print(
        f"sendgrid  adapter {adapter:8.0f} msg/s   raw urllib {baseline:8.0f} msg/s   "
        f"ratio {adapter / baseline:.2f}   (concurrency {args.concurrency}, keep-alive; "
        f"goal >= {SENDGRID_GOAL} msg/s)"
    )
    if adapter < SENDGRID_GOAL:
        missed.append(f"SendGrid {adapter:.0f} msg/s < {SENDGRID_GOAL}")
    print(
        f"sendgrid  adapter {sdk_transport:8.0f} msg/s   raw urllib {baseline:8.0f} msg/s   "
        f"ratio {sdk_transport / baseline:.2f}   (TIDINGS_SENDGRID_KEEPALIVE=false)"
    )
    if args.smtp:
        for pool in (args.smtp_pool, 1):
            adapter, baseline = bench_smtp(emails, pool, args.smtp_rounds)
            ratio = adapter / baseline
            goal = f"goal >= {SMTP_GOAL}" if pool == args.smtp_pool else "reference"
            print(
                f"smtp      adapter {adapter:8.0f} msg/s   raw smtplib {baseline:7.0f} msg/s   "
                f"ratio {ratio:.2f}   ({pool} connection{'s' * (pool > 1)}, median of "
                f"{args.smtp_rounds} runs each; {goal})"
            )
            if pool == args.smtp_pool and ratio < SMTP_GOAL:
                missed.append(f"SMTP pool ratio {ratio:.2f} < {SMTP_GOAL}")
    if missed:
        print("GOAL MISSED: " + "; ".join(missed))
        sys.exit(1)


if __name__ == "__main__":
    main()

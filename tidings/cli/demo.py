"""``tidings demo`` (what ``make demo`` runs): the whole loop on embedded defaults, in the project.

Import the sample CRM, run the welcome journey (A/B subject test, holdout) through the sandbox
outbox, send an order-status SMS at once, then play what recipients and the shop do next through
the real endpoints of ``tidings serve`` (the open pixel, tracked links, ``POST /v1/orders``),
and close the loop: conversions, the experiment's decision, the journey report and its HTML.
"""

from __future__ import annotations

import email
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import typer

# The sample is an export taken on 2026-11-01: the welcome journey plays that morning, so
# "signed up in the last 14 days" means the same thing whenever the demo runs.
EXPORTED = datetime(2026, 11, 1, 9, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"


def demo(
    data: Path = typer.Option(Path("data/sample"), help="The sample CRM data to import."),
) -> None:
    """The main job on embedded defaults, in the project: import the sample CRM, run the welcome
    journey and an order-status SMS through the sandbox outbox, play opens, clicks and orders
    through the real endpoints, and report what the journey and its A/B test earned."""
    from tidings.cli import console
    from tidings.cli import crm as crm_cli
    from tidings.cli import journeys as journeys_cli
    from tidings.config import get_settings
    from tidings.crm.db import make_engine, upgrade
    from tidings.crm.importer import IMPORTERS
    from tidings.crm.quality import quality_report
    from tidings.journeys.running import find_contact, run_once, tick_all
    from tidings.journeys.runtime import Runtime
    from tidings.journeys.triggers import post_event

    # The demo runs whatever the hour: quiet hours would defer the welcome emails to morning.
    settings = get_settings().model_copy(update={"quiet_hours": "off"})
    outbox = settings.outbox_dir
    engine = make_engine(settings.database_url)
    console.rule("1. the CRM store")
    upgrade(engine)
    console.print(f"store ready at {engine.url.render_as_string(hide_password=True)}")
    console.rule("2. import the sample CRM data")
    for kind in ("contacts", "events", "orders"):
        crm_cli.print_import_report(IMPORTERS[kind](data / f"{kind}.csv", engine=engine))
    console.rule("3. data quality")
    crm_cli.print_quality(quality_report(engine=engine, stale_days=settings.stale_days))
    console.rule("4. the welcome journey (sign-ups of the last 14 days, A/B subject test)")
    runtime = Runtime.from_settings(settings, db=engine)
    runtime.load_journeys()
    journeys_cli.print_summary(
        run_once(runtime, settings.journeys_dir / "welcome.yaml", now=EXPORTED)
    )
    console.rule("5. the shop posts order.shipped -> order-status SMS at once")
    outcome = post_event(
        runtime,
        contact_id=find_contact(runtime, "C0002"),
        name="order.shipped",
        idempotency_key="demo-order-O00001",
        properties={
            "order": {
                "number": "O00001",
                "carrier": "DHL",
                "tracking_url": "https://track.example.com/O1",
            }
        },
    )
    console.print(
        "already sent in an earlier demo run"
        if outcome.duplicate
        else f"order_status: {outcome.sent} SMS sent at once"
    )
    console.rule(f"6. what was sent (files in {outbox})")
    journeys_cli.print_outbox(outbox)
    console.rule("7. recipients open and click, the shop posts orders (through tidings serve)")
    played = respond(settings, runtime, outbox, day=EXPORTED + timedelta(days=1))
    console.print(
        f"{played['opens']} opens (pixel), {played['clicks']} clicks (tracked links), "
        f"{played['orders']} orders (POST /v1/orders)",
        highlight=False,
    )
    tick_all(runtime, names=["welcome"], now=EXPORTED + timedelta(days=2))  # goals convert
    console.rule("8. what it earned: the experiment's decision and the journey report")
    report(settings, outbox.parent / "welcome-report.html")


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The web app on a free loopback port for the duration of the block; its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the demo's web app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _get(url: str) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": BROWSER})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # the click answers 302 to the shop: recorded, not followed

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:  # the 302
        return int(exc.code)


def _post(url: str, body: dict[str, Any], key: str) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def respond(settings: Any, runtime: Any, outbox: Path, *, day: datetime) -> dict[str, int]:
    """Two in three welcome recipients open, one in two clicks and orders: each through the
    link the email carries (pixel, tracked link) or the event API, as in production."""
    from tidings.web.apikeys import create_key
    from tidings.web.app import create_app

    key = create_key(runtime.db, name="demo shop").secret
    counts = {"opens": 0, "clicks": 0, "orders": 0}
    with serving(create_app(settings, db=runtime.db)) as base:
        sidecars = sorted(outbox.glob("*.json"), key=lambda p: int(p.stem))
        welcome = [
            p for p in sidecars if "hello" in json.loads(p.read_text()).get("categories", [])
        ]
        for n, sidecar in enumerate(welcome):
            meta = json.loads(sidecar.read_text())
            html = _html(sidecar.with_suffix(".eml"))
            pixel = re.search(r'src="[^"]*(/t/o/[^"]+)"', html)
            links = re.findall(r'href="[^"]*(/t/c/[^"]+)"', html)
            if n % 3 != 2 and pixel and _get(base + pixel.group(1)) == 200:
                counts["opens"] += 1
            if n % 2 == 0 and links and _get(base + links[0]) in {302, 303, 307}:
                counts["clicks"] += 1
            if n % 2 == 0:
                order = {
                    "order_id": f"DEMO-{meta['message_id']}",
                    "email": meta["to"],
                    "total": "59.90",
                    "currency": "EUR",
                    "status": "placed",
                    "placed_at": day.isoformat(),
                }
                if _post(f"{base}/v1/orders", order, key) in {200, 201}:
                    counts["orders"] += 1
    return counts


def _html(eml: Path) -> str:
    message = email.message_from_bytes(eml.read_bytes(), policy=default_policy)
    assert isinstance(message, EmailMessage)
    part = message.get_body(preferencelist=("html",))
    return str(part.get_content()) if part is not None else ""


def report(settings: Any, html_path: Path) -> None:
    from tidings.analytics.experiment_report import experiment_report
    from tidings.analytics.html import render_html
    from tidings.analytics.report import journey_report
    from tidings.cli import console
    from tidings.cli.reports import print_experiment, print_journey
    from tidings.crm.db import make_engine

    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        print_experiment(experiment_report(conn, "welcome.hello", record=False))
    with engine.connect() as conn:
        journey = journey_report(conn, "welcome")
    print_journey(journey)
    html_path.write_text(render_html(journey), encoding="utf-8")
    console.print(f"HTML report: {html_path.resolve()}", highlight=False)

"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright loads ``/reports/journeys/{name}`` from a live server, with an API key, and checks
that every chart rendered: an SVG with marks of a real size, and no console errors.

Outside CI a missing Chromium or Playwright skips the test; in CI (``CI`` or
``TIDINGS_REQUIRE_SERVICES``) it fails: CI must ``apt-get install -y chromium``. Never run
``playwright install`` (browser downloads are blocked): the Debian binary is used.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import uvicorn
from sqlalchemy import Engine

from tests.analytics.seeding import seed_store
from tests.conftest import REQUIRE_SERVICES
from tidings.analytics.attribution_run import run_attribution
from tidings.config import Settings
from tidings.web.apikeys import create_key
from tidings.web.app import create_app

CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")
CHARTS = ("funnel", "variants", "attribution", "revenue")


def _missing(what: str) -> None:
    message = f"{what}; install it: apt-get install -y chromium && pip install playwright"
    if REQUIRE_SERVICES:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def live(settings: Settings, store: Engine) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, db=store), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("the web app did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_charts_render_in_headless_chromium(live: str, store: Engine) -> None:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        _missing(f"Chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed")
    seed_store(store, contacts=60)
    with store.begin() as conn:
        run_attribution(conn, until=datetime(2027, 1, 1, tzinfo=UTC))
    key = create_key(store, name="browser")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            denied = browser.new_page()
            response = denied.goto(f"{live}/reports/journeys/promo")
            assert response is not None and response.status == 401
            context = browser.new_context(extra_http_headers={"X-API-Key": key.secret})
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            response = page.goto(f"{live}/reports/journeys/promo", wait_until="load")
            assert response is not None and response.status == 200
            for name in CHARTS:
                figure = page.locator(f'figure[data-chart="{name}"]')
                assert figure.count() == 1, name
                svg = figure.locator("svg").first
                box = svg.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 50, name
                marks = figure.locator(
                    "g[class*='mark-'][role='graphics-object'] > :is(path, rect, line, circle)"
                )
                assert marks.count() > 0, f"{name}: no marks drawn"
                sized = page.evaluate(
                    """(sel) => [...document.querySelectorAll(sel)].filter(el => {
                          const b = el.getBBox(); return b.width > 0 || b.height > 0;
                       }).length""",
                    f"figure[data-chart='{name}'] g[class*='mark-'] :is(path, rect, line)",
                )
                assert sized > 0, f"{name}: marks have no size"
            assert page.locator("#steps tbody tr").count() >= 4
        finally:
            browser.close()
    assert errors == []

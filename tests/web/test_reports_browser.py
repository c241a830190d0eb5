"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright loads ``/reports/journeys/{name}`` from a live server, with an API key, and checks
that every chart rendered: an SVG with marks of a real size, and no console errors.

Outside CI a missing Chromium or Playwright skips the test; in CI (``CI`` or
``TIDINGS_REQUIRE_SERVICES``) it fails: CI must ``apt-get install -y chromium``. Never run
``playwright install`` (browser downloads are blocked): the Debian binary is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.analytics.seeding import seed_store
from tidings.analytics.attribution_run import run_attribution
from tidings.cli.demo import serving
from tidings.config import Settings
from tidings.web.apikeys import create_key
from tidings.web.app import create_app

CHARTS = ("funnel", "variants", "attribution", "revenue")


@pytest.fixture
def live(settings: Settings, store: Engine) -> Iterator[str]:
    with serving(create_app(settings, db=store)) as url:
        yield url


def test_charts_render_in_headless_chromium(live: str, store: Engine, browser: Any) -> None:
    seed_store(store, contacts=60)
    with store.begin() as conn:
        run_attribution(conn, until=datetime(2027, 1, 1, tzinfo=UTC))
    key = create_key(store, name="browser")
    errors: list[str] = []
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
    assert errors == []

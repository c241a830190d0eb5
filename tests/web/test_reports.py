"""``GET /reports/journeys/{name}``: the HTML report behind an API key, never public."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.analytics.seeding import seed_store
from tidings.web.apikeys import create_key, revoke_key


def test_report_page_needs_a_key_and_has_the_charts(client: TestClient, store: Engine) -> None:
    seed_store(store, contacts=30)
    key = create_key(store, name="reports")
    assert client.get("/reports/journeys/promo").status_code == 401
    bad = client.get("/reports/journeys/promo", headers={"X-API-Key": "tid_x_nope"})
    assert bad.status_code == 401
    page = client.get("/reports/journeys/promo", headers={"Authorization": f"Bearer {key.secret}"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "no-store" in page.headers["cache-control"]
    for name in ("funnel", "variants", "revenue"):
        assert f'data-chart="{name}"' in page.text
    assert page.text.count("<svg") >= 3 and "<script" not in page.text
    assert 'id="steps"' in page.text and "promo" in page.text
    missing = client.get("/reports/journeys/nope", headers={"X-API-Key": key.secret})
    assert missing.status_code == 404 and "known: other, promo" in missing.json()["detail"]
    revoke_key(store, prefix=key.prefix)
    client.app.state.web.auth_cache.clear()  # type: ignore[attr-defined]
    gone = client.get("/reports/journeys/promo", headers={"X-API-Key": key.secret})
    assert gone.status_code == 401

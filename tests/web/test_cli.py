"""The web commands, and the app under a real uvicorn server on a loopback port."""

from __future__ import annotations

import httpx
import orjson
from typer.testing import CliRunner

from tests.web.conftest import seed
from tidings.cli import app
from tidings.cli.demo import serving
from tidings.web.apikeys import authenticate
from tidings.web.app import create_app

runner = CliRunner()


def test_apikey_create_revoke_and_contacts_show(store, store_url, monkeypatch) -> None:
    monkeypatch.setenv("TIDINGS_DATABASE_URL", store_url)
    from tidings.config import get_settings

    get_settings.cache_clear()
    try:
        ids = seed(store)
        created = runner.invoke(app, ["apikey", "create", "shop"])
        assert created.exit_code == 0, created.output
        secret = created.output.strip().splitlines()[-1]
        found = authenticate(store, secret)
        assert found is not None and found.name == "shop"
        prefix = secret.split("_")[1]
        assert runner.invoke(app, ["apikey", "revoke", prefix]).exit_code == 0
        assert authenticate(store, secret) is None
        assert runner.invoke(app, ["apikey", "revoke", prefix]).exit_code == 2
        shown = runner.invoke(app, ["contacts", "show", "C0", "--json"])
        assert shown.exit_code == 0, shown.output
        card = orjson.loads(shown.output)
        assert card["id"] == ids["ann"] and len(card["timeline"]) == 2  # the two messages
        table = runner.invoke(app, ["contacts", "show", "ann@example.com"])
        assert "sms" in table.output and "Ann" in table.output
        assert runner.invoke(app, ["contacts", "show", "nobody"]).exit_code == 2
    finally:
        get_settings.cache_clear()


def test_signed_webhook_through_a_real_server(settings, store, signer) -> None:
    ids = seed(store)
    web = create_app(settings, db=store)
    with serving(web) as base, httpx.Client(base_url=base, timeout=10) as client:
        events = [
            {
                "event": "delivered",
                "sg_event_id": "real-1",
                "timestamp": 1767225600,
                "tidings_message_id": str(ids["ann_email"]),
            }
        ]
        body = orjson.dumps(events)
        ok = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
        assert ok.status_code == 200, ok.text
        chunks = (b"[" + b"{}," * 100_000 for _ in range(10))  # chunked, 3 MB > limit
        big = client.post("/webhooks/sendgrid", content=chunks, headers=signer.headers(body))
        assert big.status_code == 413
        assert client.get("/readyz").json()["ready"] is True

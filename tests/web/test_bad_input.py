"""Bad input never 500s: non-finite numbers, NUL, lone surrogates, over-deep JSON (issue 11)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tidings.journeys.runtime import Runtime
from tidings.web.apikeys import create_key
from tidings.web.app import create_app


@pytest.fixture
def api(settings, store):
    runtime = Runtime.from_settings(settings, db=store)
    runtime.load_journeys()
    app = create_app(settings, db=store, runtime_factory=lambda: runtime)
    key = create_key(store, name="shop")
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {key.secret}"
        yield client


EVENT_CASES = [
    ('{"external_id": "C1", "name": "x", "properties": {"a": NaN}}', "properties"),
    ('{"external_id": "C1", "name": "x", "properties": {"a": [Infinity]}}', "properties"),
    ('{"external_id": "C1", "name": "x", "properties": {"a": -Infinity}}', "properties"),
    ('{"external_id": "C1", "name": "x", "properties": {"a": "n\\u0000l"}}', "properties"),
    ('{"external_id": "C1", "name": "x", "properties": {"n\\u0000l": 1}}', "properties"),
    ('{"external_id": "C1", "name": "n\\u0000l"}', "name"),
    ('{"external_id": "C1", "name": "x", "properties": {"a": "\\ud800"}}', "properties"),
    ('{"external_id": "C1", "name": "\\udfff"}', "name"),
    ('{"external_id": "C\\u00001", "name": "x"}', "external_id"),
]


@pytest.mark.parametrize(("body", "field"), EVENT_CASES)
def test_bad_events_are_422_naming_the_field(api, seeded, body, field) -> None:
    response = api.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.text


CONTACT_CASES = [
    ('{"external_id": "C9", "first_name": "A\\u0000b"}', "first_name"),
    ('{"external_id": "C9", "first_name": "\\ud800"}', "first_name"),
    ('{"external_id": "C9", "attributes": {"x": NaN}}', "attributes"),
    ('{"external_id": "C9", "attributes": {"x": "\\u0000"}}', "attributes"),
]


@pytest.mark.parametrize(("body", "field"), CONTACT_CASES)
def test_bad_contacts_are_422_naming_the_field(api, seeded, body, field) -> None:
    response = api.post("/v1/contacts", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.text

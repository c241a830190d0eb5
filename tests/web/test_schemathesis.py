"""schemathesis against the app's own OpenAPI spec: no generated request gets a 5xx.

The app runs on a SQLite store made when the module is collected (schemathesis builds its
test cases from the schema at collection time), seeded with contacts and messages and an API
key, so the /v1 operations get past authentication and reach the real handlers.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from tests.web.conftest import Signer, make_settings, seed
from tidings.crm.db import make_engine, upgrade
from tidings.web.apikeys import create_key
from tidings.web.app import create_app

TMP = Path(tempfile.mkdtemp(prefix="tidings-fuzz-"))
URL = f"sqlite:///{TMP / 'tidings.db'}"
ENGINE = make_engine(URL)
upgrade(ENGINE)
seed(ENGINE)
SECRET = create_key(ENGINE, name="fuzz").secret
APP = create_app(make_settings(URL, Signer(), TMP), db=ENGINE)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def teardown_module() -> None:
    ENGINE.dispose()
    shutil.rmtree(TMP, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code < 500, (case.method, case.path, response.text[:500])

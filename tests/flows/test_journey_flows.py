"""The Prefect flows run the engine: a tick and a chunked broadcast, in a real (ephemeral)
Prefect API. One harness for the module: starting it costs ~10-20 s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tests.journeys.test_engine import add_contacts, people
from tidings.config import get_settings
from tidings.crm.db import make_engine, upgrade
from tidings.crm.models import Journey, Message


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'flows.db'}"
    upgrade(make_engine(url))
    for name, value in {
        "DATABASE_URL": url,
        "OUTBOX_DIR": str(tmp_path / "outbox"),
        "SECRET_KEY": "flow-test",
        "QUIET_HOURS": "off",
        "FREQUENCY_CAP": "off",
    }.items():
        monkeypatch.setenv(f"TIDINGS_{name}", value)
    get_settings.cache_clear()
    from tidings.flows import journeys as flows

    flows.runtime.cache_clear()
    yield url
    flows.runtime.cache_clear()
    get_settings.cache_clear()


def test_tick_and_broadcast_flows(harness: None, store: str, tmp_path: Path) -> None:
    from tidings.crm.types import utcnow
    from tidings.flows.journeys import broadcast, journey_tick

    engine = make_engine(store)
    add_contacts(engine, people(30, created_at=utcnow()))
    results = journey_tick()
    welcome = next(r for r in results if r["journey"] == "welcome")
    assert welcome["enrolled"] == 30 and welcome["sent"] == welcome["messages"] > 0
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == welcome["sent"]

    with Session(engine) as session, session.begin():  # the winback run is this week's
        session.execute(
            update(Journey)
            .where(Journey.name == "winback")
            .values(created_at=utcnow().replace(year=2020))
        )
    totals = broadcast("welcome", chunk_size=10)
    assert totals["chunks"] == 3  # contact ids 1..30 in ranges of 10, mapped over tasks
    with Session(engine) as session:  # nothing new was due: no message twice
        assert session.scalar(select(func.count()).select_from(Message)) == welcome["messages"]

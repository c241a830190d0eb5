"""`tidings journey ...` and `tidings events post` on a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import FIXTURE_PROJECT
from tests.journeys.test_engine import add_contacts, people
from tidings import cli
from tidings.cli import app
from tidings.cli import journeys as journeys_cli
from tidings.config import get_settings

runner = CliRunner()


@pytest.fixture
def env(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIDINGS_DATABASE_URL", store_url)
    monkeypatch.setenv("TIDINGS_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("TIDINGS_SECRET_KEY", "cli-test")
    monkeypatch.setenv("TIDINGS_QUIET_HOURS", "off")
    for console in (cli.console, journeys_cli.console):
        monkeypatch.setattr(console, "width", 200)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_validate_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "name: broken\ntrigger: {type: segment, segment: no_such_segment}\nsteps:\n"
        "  - {id: a, type: email, template: nope, next: b}\n"
    )
    result = runner.invoke(app, ["journey", "validate", str(broken)])
    assert result.exit_code == 1
    assert f"{broken}:2:26: trigger.segment: no segment named 'no_such_segment'" in result.output
    assert f"{broken}:4:42: steps[0].next: step 'a' goes to 'b'" in result.output
    assert "3 problem(s)" in result.output
    shipped = runner.invoke(app, ["journey", "validate"])
    assert shipped.exit_code == 0, shipped.output
    assert shipped.output.count("ok ") == 4


def test_schema_is_generated_from_the_models() -> None:
    result = runner.invoke(app, ["journey", "schema"])
    schema = json.loads(result.output)
    assert set(schema["required"]) == {"name", "trigger", "steps"}
    assert "WaitForEventStep" in schema["$defs"]
    wait = schema["$defs"]["WaitForSegmentStep"]
    assert set(wait["required"]) >= {"segment", "timeout", "on_timeout"}
    assert wait["properties"]["until"]["enum"] == ["in", "out"]
    assert schema["$defs"]["WaitStep"]["properties"]["duration"]["type"] == "string"


def test_plan_run_status_pause_and_post(env: Path, store_url: str) -> None:
    from tidings.crm.db import make_engine
    from tidings.crm.types import utcnow

    add_contacts(make_engine(store_url), people(4, created_at=utcnow()))  # new sign-ups
    welcome = FIXTURE_PROJECT / "journeys" / "welcome.yaml"

    plan = runner.invoke(app, ["journey", "plan", str(welcome)])
    assert plan.exit_code == 0, plan.output
    assert "welcome: 4 contacts would enter now" in plan.output
    assert not (env / "outbox").exists()  # a plan sends nothing ...
    status = runner.invoke(app, ["journey", "status", "welcome"])
    assert status.exit_code != 0  # ... and writes nothing: the journey is not even registered

    run = runner.invoke(app, ["journey", "run", "--local", str(welcome)])
    assert run.exit_code == 0, run.output
    assert "enrolled" in run.output and "sent" in run.output
    sent = len(list((env / "outbox").glob("*.eml")))
    assert sent >= 1

    status = runner.invoke(app, ["journey", "status", "welcome"])
    assert status.exit_code == 0, status.output
    assert "pause" in status.output and "active" in status.output

    assert runner.invoke(app, ["journey", "pause", "welcome"]).exit_code == 0
    assert "paused" in runner.invoke(app, ["journey", "status", "welcome"]).output
    assert runner.invoke(app, ["journey", "resume", "welcome"]).exit_code == 0
    assert runner.invoke(app, ["journey", "pause", "nope"]).exit_code == 1

    props = json.dumps({"order": {"number": "9", "tracking_url": "https://t.example/9"}})
    posted = runner.invoke(
        app,
        [
            "events",
            "post",
            "order.shipped",
            "--contact",
            "P1",
            "--properties",
            props,
            "--key",
            "k-9",
        ],
    )
    assert posted.exit_code == 0, posted.output
    assert "order_status: 1 enrolled" in posted.output and "sent 1" in posted.output
    again = runner.invoke(
        app,
        [
            "events",
            "post",
            "order.shipped",
            "--contact",
            "P1",
            "--properties",
            props,
            "--key",
            "k-9",
        ],
    )
    assert "already recorded" in again.output
    bad = runner.invoke(app, ["events", "post", "x", "--contact", "P1", "--properties", "[1]"])
    assert bad.exit_code == 2


def test_paused_means_paused_for_every_command(env: Path, store_url: str) -> None:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from tidings.crm.db import make_engine
    from tidings.crm.models import Enrollment, Message
    from tidings.crm.types import utcnow

    db = make_engine(store_url)
    add_contacts(db, people(3, created_at=utcnow()))
    welcome = FIXTURE_PROJECT / "journeys" / "welcome.yaml"
    assert runner.invoke(app, ["journey", "run", "--local", str(welcome)]).exit_code == 0
    assert runner.invoke(app, ["journey", "pause", "welcome"]).exit_code == 0
    add_contacts(db, [{**p, "external_id": f"N{i}", "email": f"n{i}@example.com"}
                      for i, p in enumerate(people(4, created_at=utcnow()))])  # fmt: skip

    def counts() -> tuple[int, int]:
        with Session(db) as session:
            return (
                session.scalar(select(func.count()).select_from(Enrollment)) or 0,
                session.scalar(select(func.count()).select_from(Message)) or 0,
            )

    before = counts()
    for args in (["journey", "run", "--local", str(welcome)], ["journey", "tick", "welcome"],
                 ["journey", "tick", "welcome", "--now", "2027-01-01T10:00"]):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "journey welcome is paused: nothing was enrolled" in result.output, args
    assert counts() == before  # the four new sign-ups were not taken in, nothing was sent


def test_now_plays_a_time_based_journey_forward(env: Path, store_url: str) -> None:
    """The welcome journey waits three days, then reminds whoever did not open: seen with
    --now, without waiting three days."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tidings.crm.db import make_engine
    from tidings.crm.models import Message

    start = "2026-12-01T10:00:00+00:00"
    add_contacts(make_engine(store_url), people(12, created_at=datetime.fromisoformat(start)))
    welcome = FIXTURE_PROJECT / "journeys" / "welcome.yaml"
    run = runner.invoke(app, ["journey", "run", "--local", str(welcome), "--now", start])
    assert run.exit_code == 0, run.output

    def steps() -> list[str]:
        with Session(make_engine(store_url)) as session:
            return list(session.scalars(select(Message.step_id).where(Message.status == "sent")))

    first = steps()
    assert first and set(first) == {"hello"}
    too_early = runner.invoke(app, ["journey", "tick", "welcome", "--now", "2026-12-03T10:00"])
    assert too_early.exit_code == 0 and steps() == first
    later = runner.invoke(app, ["journey", "tick", "welcome", "--now", "2026-12-04T10:01"])
    assert later.exit_code == 0, later.output
    reminders = [s for s in steps() if s == "reminder"]
    assert len(reminders) == len(first)  # nobody opened: reminded (the holdout gets nothing)
    bad = runner.invoke(app, ["journey", "tick", "--now", "next tuesday"])
    assert bad.exit_code == 2 and "is not an ISO 8601 time" in bad.output

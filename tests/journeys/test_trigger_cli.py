"""`tidings journey trigger`, and commands that fail to send exit non-zero with the reasons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.journeys.test_api_trigger import api_project
from tests.journeys.test_engine import add_contacts, people
from tidings import cli
from tidings.cli import app
from tidings.cli import journeys as journeys_cli
from tidings.cli import web as web_cli
from tidings.config import get_settings
from tidings.crm.db import make_engine

runner = CliRunner()


@pytest.fixture
def env(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIDINGS_PROJECT_DIR", str(api_project(tmp_path)))
    monkeypatch.setenv("TIDINGS_DATABASE_URL", store_url)
    monkeypatch.setenv("TIDINGS_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("TIDINGS_SECRET_KEY", "cli-test")
    monkeypatch.setenv("TIDINGS_QUIET_HOURS", "off")
    monkeypatch.setenv("TIDINGS_FREQUENCY_CAP", "off")
    for console in (cli.console, journeys_cli.console, web_cli.console):
        monkeypatch.setattr(console, "width", 300)
    get_settings.cache_clear()
    add_contacts(make_engine(store_url), people(3))
    yield tmp_path
    get_settings.cache_clear()


def sms_count(tmp_path: Path) -> int:
    return sum(1 for p in (tmp_path / "outbox").glob("*.json") if '"sms"' in p.read_text())


def test_trigger_contacts_file_and_data(env: Path) -> None:
    named = runner.invoke(
        app,
        [
            *("journey", "trigger", "launch", "--contact", "P0", "-c", "p1@example.com"),
            *("--data", '{"launch": "spring", "code": "Z9"}', "--key", "first"),
        ],
    )
    assert named.exit_code == 0, named.output
    assert "journey launch: 2 named, 2 enrolled; sent 2, failed 0" in named.output
    again = runner.invoke(
        app, ["journey", "trigger", "launch", "-c", "P0", "--data", "{}", "--key", "first"]
    )
    assert again.exit_code == 0, again.output
    assert "0 enrolled, 1 already in" in again.output
    csv = env / "codes.csv"
    csv.write_text("external_id,code,launch\nP2,C3,autumn\n")
    from_file = runner.invoke(app, ["journey", "trigger", "launch", "--file", str(csv)])
    assert from_file.exit_code == 0, from_file.output
    assert "1 enrolled; sent 1" in from_file.output
    bodies = sorted(p.read_text() for p in (env / "outbox").glob("*.json"))
    assert any("Code C3 / C3 for the autumn launch." in b for b in bodies)
    assert sms_count(env) == 3


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["order_status", "-c", "P0"], "only `type: api` journeys can be triggered"),
        (["launch", "-c", "P0", "-c", "nobody"], "1 contact(s) not found: 'nobody'"),
        (["no_such", "-c", "P0"], "no journey named 'no_such'"),
        (["launch"], "name the contacts once"),
        (["launch", "-c", "P0", "--segment", "new_signups"], "name the contacts once"),
    ],
)
def test_trigger_refusals_exit_2_and_send_nothing(env: Path, args: list[str], said: str) -> None:
    runner.invoke(app, ["journey", "tick", "--now", "2020-01-01T00:00"])  # registers them
    result = runner.invoke(app, ["journey", "trigger", *args])
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())
    assert sms_count(env) == 0


def test_trigger_a_paused_journey_says_it_is_paused(env: Path) -> None:
    runner.invoke(app, ["journey", "tick", "--now", "2020-01-01T00:00"])
    assert runner.invoke(app, ["journey", "pause", "launch"]).exit_code == 0
    result = runner.invoke(app, ["journey", "trigger", "launch", "-c", "P0"])
    assert result.exit_code == 2
    assert "journey 'launch' is paused" in result.output
    assert "tidings journey resume launch" in result.output


def test_a_failed_send_exits_non_zero_with_the_reason_and_the_card_shows_it(env: Path) -> None:
    posted = runner.invoke(
        app,
        [
            *("events", "post", "order.shipped", "--contact", "P0"),
            *("--properties", '{"order": {"number": "1"}}'),
        ],
    )
    assert posted.exit_code == 1, posted.output
    said = " ".join(posted.output.split())
    assert "sent 0, failed 1" in said
    assert (
        "failed 1: templates/sms/order_shipped.sms.j2:1: UndefinedError: 'dict object' has no "
        "attribute 'tracking_url' (P0)"
    ) in said
    card = runner.invoke(app, ["contacts", "show", "P0"])
    assert card.exit_code == 0, card.output
    assert "failed (templates/sms/order_shipped.sms.j2:1: UndefinedError" in card.output

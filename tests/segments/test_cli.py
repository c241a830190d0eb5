"""``tidings segment`` against a real SQLite store holding the hand-built CRM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.segments.crm_fixture import NOW, build_crm
from tidings.cli import app
from tidings.config import get_settings
from tidings.crm.db import make_engine, upgrade


@pytest.fixture
def store_env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    build_crm(engine)
    engine.dispose()
    monkeypatch.setenv("TIDINGS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    yield sqlite_url
    get_settings.cache_clear()


def test_list_preview_explain_refresh(store_env: str, tmp_path: Path) -> None:
    seg = tmp_path / "pro.yaml"
    seg.write_text("name: pro\nrule: {attribute: plan, eq: pro}\n", encoding="utf-8")
    runner = CliRunner()
    now = ["--now", NOW.isoformat(), "--dir", str(tmp_path)]

    listed = runner.invoke(app, ["segment", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0 and "pro" in listed.output

    shown = runner.invoke(app, ["segment", "preview", "pro", "--limit", "2", *now])
    assert shown.exit_code == 0, shown.output
    assert "pro: 4 contacts" in shown.output and "c01" in shown.output and "c08" not in shown.output

    sql = runner.invoke(app, ["segment", "explain", str(seg), *now])
    assert sql.exit_code == 0 and "json_extract(contacts.attributes" in sql.output
    assert "'pro'" in sql.output  # values written in

    first = runner.invoke(app, ["segment", "refresh", "pro", *now])
    again = runner.invoke(app, ["segment", "refresh", "--all", *now])
    assert "pro: 4 entered, 0 exited" in first.output
    assert "pro: 0 entered, 0 exited" in again.output


def test_schema_has_every_rule_kind_and_key() -> None:
    import json

    from tidings.segments.rules import KINDS

    result = CliRunner().invoke(app, ["segment", "schema"])
    assert result.exit_code == 0, result.output
    defs = json.loads(result.output)["$defs"]
    assert {d["required"][0] for n, d in defs.items() if n.endswith("Rule")} >= set(KINDS)
    assert {"attribute", "for"} <= set(defs["HasBeenSpec"]["properties"])
    assert {"last_event", "where", "within"} == set(defs["LastEventRule"]["properties"])
    assert "template" in defs["EngagementSpec"]["properties"]
    assert {"seed", "weights", "part"} == set(defs["SplitSpec"]["properties"])
    assert "checkout.*" in defs["EventRule"]["properties"]["event"]["description"]

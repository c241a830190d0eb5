"""The `tidings` command line end to end, on a store named by TIDINGS_DATABASE_URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidings import cli
from tidings.cli import app
from tidings.cli import crm as crm_cli
from tidings.config import Settings, get_settings, refresh_readme

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def cli_store(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TIDINGS_DATABASE_URL", store_url)
    for console in (cli.console, crm_cli.console):  # no wrapping in the middle of a message
        monkeypatch.setattr(console, "width", 200)
    get_settings.cache_clear()
    yield store_url
    get_settings.cache_clear()


def test_import_and_quality_commands(cli_store: str) -> None:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "already at revision" in result.output

    messy = ROOT / "tests" / "crm" / "data" / "messy_contacts.csv"
    result = runner.invoke(app, ["contacts", "import", str(messy), "--json"])
    assert result.exit_code == 1  # good rows imported, some rejected
    report = json.loads(result.output)
    assert (report["accepted"], report["rejected"], report["warned"]) == (12, 3, 4)
    assert {"line": 13, "column": "consent_email"}.items() <= report["errors"][1].items()
    assert {"line": 9, "column": "timezone"}.items() <= report["warnings"][1].items()

    result = runner.invoke(app, ["contacts", "import", str(ROOT / "data/sample/contacts.csv")])
    assert result.exit_code == 0, result.output  # a bad timezone leaves out the timezone only
    assert "imported without these fields" in result.output and "Europe/Atlantis" in result.output

    for kind in ("events", "orders"):
        result = runner.invoke(app, [kind, "import", str(ROOT / f"data/sample/{kind}.csv")])
        assert result.exit_code == 0, result.output
        assert "0 rejected" in result.output

    result = runner.invoke(app, ["crm", "quality", "--json"])
    assert result.exit_code == 0, result.output
    quality = json.loads(result.output)
    assert quality["contacts"] == 10 + 301
    assert quality["duplicates"]["similar_name_and_phone"]["groups"] >= 1

    result = runner.invoke(app, ["crm", "quality"])
    assert "likely duplicates" in result.output and "completeness" in result.output


def test_file_errors_exit_2_with_location(cli_store: str, tmp_path: Path) -> None:
    bad = tmp_path / "contacts.csv"
    bad.write_text("email,EMAIL\n")
    result = runner.invoke(app, ["contacts", "import", str(bad)])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)
    assert f"{bad}:1" in str(result.exception)


def test_readme_configuration_table_is_current() -> None:
    """Every setting is documented: the README's table is exactly what ``make docs`` writes."""
    readme = (ROOT / "README.md").read_text()
    assert refresh_readme(readme) == readme, "run `make docs` to refresh README.md"
    for name in Settings.model_fields:
        assert f"`TIDINGS_{name.upper()}`" in readme


def test_contacts_export_and_erase_commands(cli_store: str, tmp_path: Path) -> None:
    people = tmp_path / "people.csv"
    people.write_text(
        "external_id,email,phone,first_name,consent_email\n"
        "E1,eve@example.com,+14155550177,Eve,yes\nE2,max@example.com,,Max,yes\n"
    )
    assert runner.invoke(app, ["contacts", "import", str(people)]).exit_code == 0
    out = tmp_path / "eve.json"
    result = runner.invoke(app, ["contacts", "export", "eve@example.com", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["contact"]["phone"] == "+14155550177"
    assert document["tables"]["consent_changes"][0]["source"] == "import:people.csv"
    # without --yes it asks; "n" leaves everything as it was
    result = runner.invoke(app, ["contacts", "erase", "E1"], input="n\n")
    assert result.exit_code == 1 and "Erase contact" in result.output
    result = runner.invoke(app, ["contacts", "erase", "E1", "--yes", "--json", "--reason", "T-1"])
    assert result.exit_code == 0, result.output
    erased = json.loads(result.output)
    assert erased["status"] == "erased" and erased["counts"]["consents"] == {"deleted": 1}
    result = runner.invoke(app, ["contacts", "erase", "eve@example.com", "--yes"])
    assert result.exit_code == 0 and "already erased" in result.output
    assert runner.invoke(app, ["contacts", "erase", "nobody@example.com"]).exit_code == 2
    # the same file again: Max unchanged, Eve suppressed and said so; exit 1
    result = runner.invoke(app, ["contacts", "import", str(people)])
    assert result.exit_code == 1, result.output
    assert "1 suppressed" in result.output and "erased" in result.output
    report = json.loads(runner.invoke(app, ["contacts", "import", str(people), "--json"]).output)
    assert (report["suppressed"], report["unchanged"], report["inserted"]) == (1, 1, 0)
    assert report["suppressions"][0]["line"] == 2

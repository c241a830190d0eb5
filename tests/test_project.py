"""A tidings project is a folder of content; the engine is the one installed package.

These run the `tidings` command as a user does, in a subprocess whose working directory is the
project (no TIDINGS_PROJECT_DIR), so they see exactly what a marketer in their own folder sees.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.conftest import FIXTURE_PROJECT
from tidings.config import Settings
from tidings.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "tidings" / "project_template"


def tidings(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        cwd=cwd,
        env={**clean, "TIDINGS_QUIET_HOURS": "off", "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def journeys_in(db: Path) -> set[str]:
    from tidings.crm.models import Journey

    with Session(create_engine(f"sqlite:///{db}")) as session:
        return set(session.scalars(select(Journey.name)))


def test_the_example_project_is_valid() -> None:
    """The repository's top level is the example project; CI checks it as a marketer's CI would."""
    for args in (["journey", "validate"], ["templates", "check"], ["segment", "list"]):
        done = tidings(*args, cwd=ROOT)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert tidings("journey", "validate", cwd=ROOT).stdout.count("ok ") == 4


def test_init_writes_a_project_that_runs_on_its_own(tmp_path: Path) -> None:
    done = tidings("init", "shop", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shop = tmp_path / "shop"
    for path in (
        "journeys/welcome.yaml",
        "segments/new_signups.yaml",
        "templates/samples.yaml",
        "templates/email/welcome.mjml",
        "channels/email.yaml",
        "channels/sms.yaml",
        "flows/journey_flows.py",
        "prefect.yaml",
        ".env",
    ):
        assert (shop / path).is_file(), path
    assert tidings("init", "shop", cwd=tmp_path).returncode == 2  # never overwrites

    for args in (["db", "upgrade"], ["journey", "validate"], ["templates", "check"]):
        done = tidings(*args, cwd=shop)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    (shop / "contacts.csv").write_text(
        "external_id,email,first_name,consent_email,signed_up_at\n"
        f"S1,s1@example.com,Sam,yes,{__import__('datetime').date.today().isoformat()}\n"
    )
    assert tidings("contacts", "import", "contacts.csv", cwd=shop).returncode == 0
    run = tidings("journey", "run", "journeys/welcome.yaml", cwd=shop)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Prefect" not in run.stdout  # no temporary server without one configured
    assert len(list((shop / "outbox").glob("*.eml"))) == 1
    # The README's next commands, as typed, on the store the project's .env names.
    status = tidings("journey", "status", "welcome", cwd=shop)
    assert status.returncode == 0 and "active" in status.stdout, status.stdout + status.stderr
    card = tidings("contacts", "show", "S1", cwd=shop)
    assert card.returncode == 0 and "s1@example.com" in card.stdout, card.stdout + card.stderr
    assert journeys_in(shop / "tidings.db") == {"welcome"}  # nothing of the example content
    played = tidings(
        "journey",
        "simulate",
        "journeys/welcome.yaml",
        "-s",
        "journeys/scenarios/welcome.yaml",
        cwd=shop,
    )
    assert played.returncode == 0 and "every expectation met" in played.stdout, played.stdout
    assert not (tmp_path / "tidings.db").exists()


def test_a_users_own_folder_is_used_from_anywhere(tmp_path: Path) -> None:
    """--project (or TIDINGS_PROJECT_DIR) from any folder; only that project's journeys."""
    project = tmp_path / "mine"
    shutil.copytree(FIXTURE_PROJECT, project)
    for name in ("welcome", "winback", "abandoned_cart"):
        (project / "journeys" / f"{name}.yaml").unlink()
    db = f"sqlite:///{tmp_path / 'store.db'}"
    assert tidings("db", "upgrade", cwd=tmp_path, TIDINGS_DATABASE_URL=db).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "templates").mkdir(parents=True)  # a templates/ folder must shadow nothing
    validated = tidings("--project", str(project), "journey", "validate", cwd=elsewhere)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout.count("ok ") == 1
    ticked = tidings(
        "journey", "tick", cwd=elsewhere, TIDINGS_DATABASE_URL=db, TIDINGS_PROJECT_DIR=str(project)
    )
    assert ticked.returncode == 0, ticked.stdout + ticked.stderr
    assert journeys_in(tmp_path / "store.db") == {"order_status"}
    missing = tidings("--project", str(tmp_path / "nope"), "journey", "validate", cwd=tmp_path)
    assert missing.returncode == 2 and "tidings init" in missing.stderr


def test_one_broken_file_does_not_stop_the_others(tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(FIXTURE_PROJECT, project)
    (project / "journeys" / "welcome.yaml").write_text(
        (project / "journeys" / "welcome.yaml").read_text().replace("type: wait\n", "type: wiat\n")
    )
    (project / "segments" / "broken.yaml").write_text("name: broken\nrule: {atribute: x}\n")
    db = f"sqlite:///{tmp_path / 'store.db'}"
    assert tidings("db", "upgrade", cwd=project, TIDINGS_DATABASE_URL=db).returncode == 0
    ticked = tidings("journey", "tick", cwd=project, TIDINGS_DATABASE_URL=db)
    assert ticked.returncode == 0, ticked.stdout + ticked.stderr
    assert "skipped:" in ticked.stderr and "welcome.yaml" in ticked.stderr
    assert "broken.yaml" in ticked.stderr
    assert journeys_in(tmp_path / "store.db") == {"order_status", "winback", "abandoned_cart"}
    posted = tidings(
        "events",
        "post",
        "order.shipped",
        "--contact",
        "nobody",
        cwd=project,
        TIDINGS_DATABASE_URL=db,
    )
    assert "skipped:" in posted.stderr and "no contact" in (posted.stdout + posted.stderr).lower()
    listed = tidings("segment", "list", cwd=project)
    assert listed.returncode == 1  # listed, and the problem said
    assert "new_signups" in listed.stdout and "broken.yaml:2" in listed.stdout
    assert "did you mean 'attribute'" in listed.stdout
    validated = tidings("journey", "validate", cwd=project)  # CI: the whole project fails
    assert validated.returncode == 1
    assert "welcome.yaml" in validated.stdout and "broken.yaml" in validated.stdout


def test_channels_are_configured_in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TIDINGS_EMAIL_CHANNEL", raising=False)
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "email.yaml").write_text(
        "provider: smtp\nfrom: news@shop.example\nfrom_name: Shop\nrate_limit: 20\n"
    )
    (tmp_path / "channels" / "sms.yaml").write_text("provider: twilio\nfrom: '+15005550006'\n")
    settings = Settings(project_dir=tmp_path)
    assert (settings.email_channel, settings.email_from, settings.email_from_name) == (
        "smtp",
        "news@shop.example",
        "Shop",
    )
    assert (settings.sms_channel, settings.twilio_from_number) == ("twilio", "+15005550006")
    assert settings.rate_limits == {"smtp": 20}
    monkeypatch.setenv("TIDINGS_EMAIL_CHANNEL", "outbox")  # the environment wins
    assert Settings(project_dir=tmp_path).email_channel == "outbox"

    (tmp_path / "channels" / "email.yaml").write_text("provider: smtp\nfrom_nmae: Shop\n")
    with pytest.raises(InputError) as caught:
        Settings(project_dir=tmp_path)
    assert f"{tmp_path / 'channels' / 'email.yaml'}:2" in str(caught.value)
    assert "from_nmae" in str(caught.value) and "from_name" in str(caught.value)


def test_relative_paths_are_the_projects(tmp_path: Path) -> None:
    settings = Settings(project_dir=tmp_path, database_url="sqlite:///store.db")
    assert settings.database_url == f"sqlite:///{tmp_path / 'store.db'}"
    assert settings.outbox_dir == tmp_path / "outbox"
    assert settings.templates_dir == tmp_path / "templates"
    pg = "postgresql+psycopg://u@h:5432/db"
    assert Settings(project_dir=tmp_path, database_url=pg).database_url == pg


@pytest.mark.parametrize(
    "project", [ROOT, STARTER, FIXTURE_PROJECT], ids=["example", "starter", "fixture"]
)
def test_flow_files_shadow_no_importable_module(project: Path) -> None:
    """Prefect loads flows/NAME.py as module NAME: no installed package may be called so."""
    names = [p.stem for p in (project / "flows").glob("*.py")]
    assert names and all(importlib.util.find_spec(name) is None for name in names), names
    assert not (project / "flows" / "__init__.py").exists()


def test_the_wheel_installs_only_tidings(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("tidings-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "tidings"
    }
    assert "tidings/project_template/journeys/welcome.yaml" in names  # `tidings init` needs it
    assert "tidings/crm/migrations/script.py.mako" in names


SCENARIOS = sorted((ROOT / "journeys" / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_the_example_scenarios_hold(scenario: Path) -> None:
    """CI plays every shipped scenario against its journey with the real engine."""
    journey = ROOT / "journeys" / f"{scenario.stem}.yaml"
    done = tidings("journey", "simulate", str(journey), "--scenario", str(scenario), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every expectation met" in done.stdout


def test_a_wrong_expectation_fails_with_a_readable_diff(tmp_path: Path) -> None:
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(
        (ROOT / "journeys" / "scenarios" / "welcome.yaml")
        .read_text()
        .replace("bob: {sent: [hello, reminder]", "bob: {sent: [hello]")
    )
    done = tidings("journey", "simulate", "journeys/welcome.yaml", "-s", str(scenario), cwd=ROOT)
    assert done.returncode == 1
    assert "1 expectation(s) not met" in done.stdout
    assert "bob.sent: expected ['hello'], got ['hello', 'reminder']" in done.stdout

    scenario.write_text(
        "start: 2026-12-01T09:00:00Z\ncontacts: [{id: a}]\n"
        "timeline:\n  - {at: 2026-12-01T10:00:00Z, contact: a, open: hello, click: hello}\n"
        "expect: {zed: {sent: []}}\n"
    )
    bad = tidings("journey", "simulate", "journeys/welcome.yaml", "-s", str(scenario), cwd=ROOT)
    assert bad.returncode == 2
    assert f"{scenario}:" in bad.stderr and "each timeline item does one thing" in bad.stderr


def test_the_demo_closes_the_loop(tmp_path: Path) -> None:
    """`make demo` in a copy of the example project: the welcome journey sends, recipients open
    and click through the real pixel and links, orders arrive through POST /v1/orders, goals
    convert, and the experiment's decision and the journey report (HTML too) come out."""
    project = tmp_path / "example"
    for part in ("journeys", "segments", "templates", "channels", "data"):
        shutil.copytree(ROOT / part, project / part)
    done = tidings("demo", cwd=project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = " ".join(done.stdout.split())
    played = re.search(r"(\d+) opens \(pixel\), (\d+) clicks .*?, (\d+) orders", out)
    assert played and all(int(n) > 0 for n in played.groups()), out[-2000:]
    assert "experiment welcome.hello" in out and "decision:" in out
    html = (project / "welcome-report.html").read_text()
    assert html.count("<svg") >= 3
    with Session(create_engine(f"sqlite:///{project / 'tidings.db'}")) as session:
        from tidings.crm.models import Conversion

        converted = session.scalars(select(Conversion.goal)).all()
    assert converted and set(converted) == {"welcome:order.placed"}

"""Settings and service errors end in one clear line (exit 2), never a traceback.

Each test runs the real command line (``python -m tidings``) in a child process, as a user
would, with the environment it names.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import FIXTURE_PROJECT
from tidings.config import get_settings
from tidings.errors import ConfigurationError


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def tidings(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIDINGS_") or k == "TIDINGS_SECRET_KEY"
    }
    base |= {"TIDINGS_PROJECT_DIR": str(FIXTURE_PROJECT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a failed command (exit 2, no traceback)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def migrated(sqlite_url: str) -> str:
    assert tidings("db", "upgrade", TIDINGS_DATABASE_URL=sqlite_url).returncode == 0
    return sqlite_url


def test_misspelt_channel_names_variable_value_and_choices(migrated: str) -> None:
    result = tidings(
        "journey",
        "status",
        "welcome",
        TIDINGS_DATABASE_URL=migrated,
        TIDINGS_EMAIL_CHANNEL="sendgird",
    )
    line = one_error_line(result)
    assert "TIDINGS_EMAIL_CHANNEL='sendgird'" in line
    assert "outbox, sendgrid, smtp" in line and "did you mean 'sendgrid'" in line


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("TIDINGS_SMS_CHANNEL", "twillio", "is not one of outbox, twilio (did you mean 'twilio'?)"),
        ("TIDINGS_IMPORT_BATCH_SIZE", "0", "'0': input should be greater than or equal to 1"),
        ("TIDINGS_DEFAULT_REGION", "XX", "'XX' is not a region phonenumbers knows"),
    ],
)
def test_settings_error_is_one_line(
    clean_settings: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    clean_settings.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert "\n" not in message and message.startswith(variable) and said in message


def test_redis_down_for_ingest(migrated: str) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    line = one_error_line(tidings("ingest", TIDINGS_DATABASE_URL=migrated, TIDINGS_REDIS_URL=url))
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in line
    assert "hunter2" not in line and "redis-server" in line


@pytest.mark.parametrize(
    "command", [["db", "current"], ["journey", "status", "welcome"], ["crm", "quality"]]
)
def test_postgresql_down_for_any_command(command: list[str]) -> None:
    url = f"postgresql+psycopg://tidings:hunter2@127.0.0.1:{free_port()}/shop"
    line = one_error_line(tidings(*command, TIDINGS_DATABASE_URL=url))
    assert "cannot connect to the store at postgresql+psycopg://tidings:***@127.0.0.1:" in line
    assert "start PostgreSQL or fix TIDINGS_DATABASE_URL" in line and "hunter2" not in line


def test_store_not_migrated_says_db_upgrade(sqlite_url: str) -> None:
    line = one_error_line(tidings("crm", "quality", TIDINGS_DATABASE_URL=sqlite_url))
    assert "not migrated" in line and "tidings db upgrade" in line


def test_read_only_status_needs_no_provider_key(migrated: str) -> None:
    welcome = str(FIXTURE_PROJECT / "journeys" / "welcome.yaml")
    ran = tidings("journey", "run", welcome, TIDINGS_DATABASE_URL=migrated)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    sendgrid = {"TIDINGS_DATABASE_URL": migrated, "TIDINGS_EMAIL_CHANNEL": "sendgrid"}

    status = tidings("journey", "status", "welcome", **sendgrid)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "welcome" in status.stdout

    # a command that sends still says what is missing, in one line
    line = one_error_line(tidings("journey", "tick", **sendgrid))
    assert "TIDINGS_SENDGRID_API_KEY is not set" in line

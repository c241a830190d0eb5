"""Imports check the header before any row, and a bad optional field drops the field, not the
person. Run through the real command line (``python -m tidings``), so the exit codes and the
one-line errors are what a user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import FIXTURE_PROJECT
from tidings.crm.columns import CONTACTS, EVENTS, ORDERS, Columns
from tidings.crm.db import make_engine
from tidings.crm.importer import import_contacts
from tidings.crm.models import Contact, Order
from tidings.errors import InputError


def tidings(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TIDINGS_PROJECT_DIR": str(FIXTURE_PROJECT),
        "TIDINGS_DATABASE_URL": url,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def count(url: str, model: type[Contact] | type[Order]) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        engine.dispose()


def test_misspelt_email_column_stops_before_any_row(store_url: str, tmp_path: Path) -> None:
    column = "E-Mail"
    path = tmp_path / "contacts.csv"
    path.write_text(f"external_id,{column},first_name\nC1,ann@example.com,Ann\n")

    result = tidings(store_url, "contacts", "import", str(path))

    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.stderr
    assert f"{path}:1:" in line
    assert f"column {column!r}" in line and "did you mean 'email'" in line
    assert "--allow-extra-columns" in line
    assert count(store_url, Contact) == 0


@pytest.mark.parametrize(
    ("columns", "column", "meant"),
    [
        (CONTACTS, "e-mail", "email"),
        (CONTACTS, "mail", "email"),
        (CONTACTS, "Email Address", "email"),
        (CONTACTS, "phone_number", "phone"),
        (CONTACTS, "First Name", "first_name"),
        (CONTACTS, "emial", "email"),
        (CONTACTS, "timezon", "timezone"),
        (ORDERS, "amount", "total"),
        (ORDERS, "Price", "total"),
        (ORDERS, "order_number", "order_id"),
        (EVENTS, "event_name", "name"),
        (EVENTS, "timestamp", "occurred_at"),
    ],
)
def test_suggestions(columns: Columns, column: str, meant: str) -> None:
    assert columns.suggestion(column) == meant


def test_ordinary_extra_columns_are_not_suspicious() -> None:
    header = "external_id,Email,plan,zip,signup_date,lifetime_value,vip,name,state,emails"
    assert CONTACTS.suspicious(header.split(",")) == []  # emails: email is there already
    assert EVENTS.suspicious(["external_id", "name", "occurred_at", "sku", "qty", "amount"]) == []
    assert ORDERS.suspicious(["order_id", "email", "total", "channel", "coupon"]) == []


def test_allow_extra_columns_keeps_it_as_an_attribute(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text("external_id,e-mail\nC1,ann@example.com\n")

    result = tidings(store_url, "contacts", "import", str(path), "--allow-extra-columns")

    assert result.returncode == 0, result.stdout + result.stderr
    engine = make_engine(store_url)
    with engine.connect() as conn:
        email, attributes = conn.execute(select(Contact.email, Contact.attributes)).one()
    engine.dispose()
    assert (email, attributes) == (None, {"e-mail": "ann@example.com"})


def test_orders_amount_names_the_header_not_every_row(store_url: str, tmp_path: Path) -> None:
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("external_id,email\nC1,ann@example.com\n")
    assert tidings(store_url, "contacts", "import", str(contacts)).returncode == 0
    orders = tmp_path / "orders.csv"
    rows = "".join(f"O{i},C1,{i}.00,EUR,paid,2026-01-0{i}\n" for i in range(1, 6))
    orders.write_text("order_id,external_id,amount,currency,status,placed_at\n" + rows)

    result = tidings(store_url, "orders", "import", str(orders))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{orders}:1:" in result.stderr
    assert "column 'amount'" in result.stderr and "did you mean 'total'" in result.stderr
    assert "line 2" not in result.stdout + result.stderr  # not one error per row

    # kept as an attribute, the file still has no total: one header error, nothing imported
    result = tidings(store_url, "orders", "import", str(orders), "--allow-extra-columns")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1
    assert f"{orders}:1: the header has no total column" in result.stderr
    assert count(store_url, Order) == 0


def test_missing_required_columns_are_one_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    path = tmp_path / "contacts.csv"
    path.write_text("first_name,plan\n" + "Ann,pro\n" * 50)
    with pytest.raises(InputError, match=r"contacts.csv:1: the header has no external_id or email"):
        import_contacts(path, engine=engine)


def test_jsonl_keys_are_checked_like_a_header(sqlite_url: str, tmp_path: Path) -> None:
    from tidings.crm.db import upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    path = tmp_path / "contacts.jsonl"
    lines = [
        {"external_id": "C1", "email": "ann@example.com"},
        {"external_id": "C2", "E-Mail": "bo@example.com"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = import_contacts(path, engine=engine)
    assert (report.inserted, report.rejected) == (1, 1)
    assert (report.errors[0].line, report.errors[0].column) == (2, "E-Mail")
    assert "did you mean 'email'" in report.errors[0].reason
    allowed = import_contacts(path, engine=engine, allow_extra_columns=True)
    assert (allowed.inserted, allowed.rejected) == (1, 0)


def test_bad_phones_drop_the_phone_not_the_person(store_url: str, tmp_path: Path) -> None:
    """One phone in four does not parse: every contact is imported with its email."""
    path = tmp_path / "contacts.csv"
    rows = [
        f"C{i},person{i}@example.com,{'12345' if i % 4 == 0 else f'+1 415 555 {i:04d}'},"
        f"{'Mars/Olympus' if i == 7 else 'Europe/Berlin'}\n"
        for i in range(1, 401)
    ]
    path.write_text("external_id,email,phone,timezone\n" + "".join(rows))

    result = tidings(store_url, "contacts", "import", str(path), "--json")

    assert result.returncode == 0, result.stdout + result.stderr  # every row is in
    report = json.loads(result.stdout)
    assert (report["rows"], report["accepted"], report["rejected"]) == (400, 400, 0)
    assert report["warned"] == 101
    assert report["errors"] == []
    by_line = {(w["line"], w["column"]) for w in report["warnings"]}
    assert (5, "phone") in by_line and (8, "timezone") in by_line  # line = row + 1
    assert all("imported without it" in w["reason"] for w in report["warnings"])
    engine = make_engine(store_url)
    with engine.connect() as conn:
        stored = {
            ext: email for ext, email in conn.execute(select(Contact.external_id, Contact.email))
        }
        phones = conn.scalar(select(func.count()).where(Contact.phone.is_not(None)))
    engine.dispose()
    assert len(stored) == 400 and all(stored.values())
    assert phones == 300

    result = tidings(store_url, "contacts", "import", str(path))  # the table says so too
    assert "100 with warnings" not in result.stdout and "101 with warnings" in result.stdout
    assert "imported without these fields" in result.stdout


def test_a_row_without_usable_identity_is_still_rejected(sqlite_url: str, tmp_path: Path) -> None:
    from tidings.crm.db import upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    path = tmp_path / "contacts.csv"
    path.write_text("external_id,email,phone\n,not-an-email,+14155552671\n,,+14155552672\n")
    report = import_contacts(path, engine=engine)
    assert (report.accepted, report.rejected, report.warned) == (0, 2, 0)
    assert [(e.line, e.column) for e in report.errors] == [(2, "email"), (3, None)]

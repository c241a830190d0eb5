"""Normalisation of imported values."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.crm.normalize import FieldError, normalize_email, parse_timestamp, typed_value

LOCAL = st.text(alphabet="abcXYZ019.-_+'!", min_size=1, max_size=12)
LABEL = st.text(alphabet="abz09-", min_size=1, max_size=8)
TLD = st.sampled_from(["com", "de", "c0", "test", "local", "x", "museum", "-a"])


@settings(max_examples=400, deadline=None)
@given(local=LOCAL, labels=st.lists(LABEL, min_size=1, max_size=3), tld=TLD)
def test_fast_email_path_agrees_with_email_validator(
    local: str, labels: list[str], tld: str
) -> None:
    address = f"{local}@{'.'.join(labels)}.{tld}"
    try:
        expected: str | None = validate_email(address, check_deliverability=False).normalized
        expected = expected.lower() if expected else None
    except EmailNotValidError:
        expected = None
    try:
        mine: str | None = normalize_email(address)
    except FieldError:
        mine = None
    assert mine == expected


@pytest.mark.parametrize(
    ("cell", "typed"),
    [
        ("42", 42),
        ("-7", -7),
        ("007", "007"),
        ("4.50", 4.5),
        ("TRUE", True),
        ("false", False),
        ("2024-02-29", "2024-02-29"),
        ("2023-02-29", "2023-02-29"),  # not a date: kept as text
        ("2024-03-01T10:00:00+02:00", "2024-03-01T08:00:00+00:00"),
        ("+14155552671", "+14155552671"),
        ("  spaced  ", "spaced"),
        ("12345678901234567890", "12345678901234567890"),  # too long for an id-safe integer
    ],
)
def test_typed_values(cell: str, typed: object) -> None:
    assert typed_value(cell) == typed


def test_timestamps_without_offset_are_utc() -> None:
    assert parse_timestamp("2026-03-01 10:00").isoformat() == "2026-03-01T10:00:00+00:00"
    assert parse_timestamp("2026-03-01T10:00:00Z").isoformat() == "2026-03-01T10:00:00+00:00"
    with pytest.raises(FieldError, match="ISO 8601"):
        parse_timestamp("01/03/2026")

"""Normalisation of imported values."""

from __future__ import annotations

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.crm.normalize import (
    FieldError,
    _e164,
    normalize_email,
    normalize_phone,
    parse_timestamp,
    typed_value,
)

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


def _full_phone_path(text: str) -> str | None:
    """What ``phonenumbers`` alone makes of a number: E.164 when valid, else None."""
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


@settings(max_examples=3000, deadline=None)
@given(code=st.sampled_from(CALLING_CODES), national=st.text("0123456789", min_size=3, max_size=13))
def test_fast_phone_path_agrees_with_phonenumbers(code: int, national: str) -> None:
    text = f"+{code}{national}"
    fast = _e164(text)
    if fast is not None:  # the fast path only ever says "valid, and already E.164"
        assert fast == text == _full_phone_path(text)
    expected = _full_phone_path(text)
    try:
        assert normalize_phone(text, region="US") == expected
    except FieldError:
        assert expected is None


def test_fast_phone_path_takes_the_example_numbers_of_every_region() -> None:
    """Each region's example numbers (every type): the fast path answers for most of them,
    always as phonenumbers does, and phonenumbers' own validity is never contradicted."""
    answered = total = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(11):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            text = f"+{example.country_code}{example.national_number}"
            expected = _full_phone_path(text)
            fast = _e164(text)
            total += 1
            if fast is not None:
                answered += 1
                assert fast == expected, text
    assert answered > 0.8 * total, f"the fast path answered {answered} of {total}"
    assert _e164("+14155552671") == "+14155552671"
    assert _e164("+14150001234") is None  # exchange 000: not a valid number
    assert _e164("(415) 555-2671") is None  # not E.164: the full path reads it

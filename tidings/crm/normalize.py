"""Normalise and validate the values of imported records.

Each function takes a raw value and returns the stored form or raises ``FieldError`` with a
reason a person can act on.

>>> normalize_email(" Ann.Lee@Example.COM ")
'ann.lee@example.com'
>>> normalize_phone("(415) 555-2671", region="US")
'+14155552671'
>>> typed_value("0042"), typed_value("42"), typed_value("4.5"), typed_value("TRUE")
('0042', 42, 4.5, True)
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

import phonenumbers
from babel import Locale, UnknownLocaleError
from babel.numbers import list_currencies
from email_validator import EmailNotValidError, validate_email

from tidings.crm.models import ConsentStatus


class FieldError(ValueError):
    """A value that cannot be stored; the message says why and what would fix it."""


GRANTED = {"yes", "y", "true", "1", "granted", "opt-in", "opt_in", "optin", "subscribed"}
REVOKED = {"no", "n", "false", "0", "revoked", "opt-out", "opt_out", "optout", "unsubscribed"}
_INT = re.compile(r"-?(?:0|[1-9]\d{0,17})")
_FLOAT = re.compile(r"-?(?:0|[1-9]\d*)\.\d+(?:[eE][-+]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


# Plain addresses (the vast majority) are checked by this strict pattern, a subset of what
# email-validator accepts; everything else (quoted parts, unicode, odd domains) goes to it.
_PLAIN_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,63})"
)
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def normalize_email(value: str) -> str:
    text = value.strip().lower()
    plain = _PLAIN_EMAIL.fullmatch(text)
    at = text.find("@")
    if (
        plain
        and len(text) <= 254
        and at <= 64
        and plain.group(1) not in _SPECIAL_USE_TLDS
        and "--" not in text[at:]  # IDNA rules on "xx--" labels: leave them to the validator
    ):
        return text
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise FieldError(f"invalid email {value!r}: {exc}") from None
    return result.normalized.lower()


def normalize_phone(value: str, *, region: str) -> str:
    text = value.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise FieldError(f"invalid phone {value!r}: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise FieldError(
            f"invalid phone {value!r}: not a valid number for region "
            f"{phonenumbers.region_code_for_number(number) or region} "
            "(write it with its country code, e.g. +44 20 7946 0958)"
        )
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


@lru_cache(maxsize=1)
def _timezones() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def normalize_timezone(value: str) -> str:
    name = _timezones().get(value.strip().lower())
    if name is None:
        raise FieldError(
            f"unknown timezone {value!r}: use an IANA name such as Europe/Berlin or "
            "America/New_York"
        )
    return name


@lru_cache(maxsize=4096)
def normalize_locale(value: str) -> str:
    try:
        return str(Locale.parse(value.strip().replace("-", "_")))
    except (UnknownLocaleError, ValueError):
        raise FieldError(f"unknown locale {value!r}: use a code such as en_US or de") from None


def consent_status(value: Any) -> ConsentStatus | None:
    """``None`` when the cell is empty: the import then says nothing about consent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ConsentStatus.GRANTED if value else ConsentStatus.REVOKED
    text = str(value).strip().lower()
    if not text:
        return None
    if text in GRANTED:
        return ConsentStatus.GRANTED
    if text in REVOKED:
        return ConsentStatus.REVOKED
    raise FieldError(
        f"consent value {value!r} is neither yes/true/1/granted nor no/false/0/revoked"
    )


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is taken as UTC."""
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise FieldError(
            f"invalid timestamp {value!r}: use ISO 8601, e.g. 2026-03-01T14:30:00Z or 2026-03-01"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_amount(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value).strip().replace(" ", ""))
    except InvalidOperation:
        raise FieldError(f"invalid amount {value!r}: use a number such as 49.90") from None
    if not amount.is_finite() or abs(amount) >= Decimal("1e12"):
        raise FieldError(f"invalid amount {value!r}")
    return amount.quantize(Decimal("0.01"))


@lru_cache(maxsize=1)
def _currencies() -> frozenset[str]:
    return frozenset(list_currencies())


def normalize_currency(value: Any) -> str:
    code = str(value).strip().upper()
    if code not in _currencies():
        raise FieldError(f"unknown currency {value!r}: use an ISO 4217 code such as USD or EUR")
    return code


def typed_value(value: Any) -> Any:
    """Type a CSV cell: integers, decimals, booleans, ISO dates kept canonical; else text.

    Numbers with leading zeros (zip codes, ids) and ``+`` prefixes stay text.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _DATE.fullmatch(text):
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            return text
    if _DATETIME.match(text):
        try:
            return parse_timestamp(text).isoformat()
        except FieldError:
            return text
    return text

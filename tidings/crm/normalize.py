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
from dataclasses import dataclass, field
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


_E164 = re.compile(r"\+([1-9]\d{6,14})")


@dataclass(slots=True, eq=False)
class _Region:
    """What validity of a national number takes in one region, compiled once: the general
    pattern and, per length, one alternation of the patterns of every number type."""

    leading: re.Pattern[str] | None
    lengths: frozenset[int]
    general: re.Pattern[str] | None
    types: tuple[tuple[frozenset[int], str], ...]
    by_length: dict[int, re.Pattern[str] | None] = field(default_factory=dict)

    @classmethod
    def of(cls, region: str) -> _Region | None:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
        if meta is None:
            return None
        descs = [
            meta.premium_rate,
            meta.toll_free,
            meta.shared_cost,
            meta.voip,
            meta.personal_number,
            meta.pager,
            meta.uan,
            meta.voicemail,
            meta.fixed_line,
        ]
        if not meta.same_mobile_and_fixed_line_pattern:
            descs.append(meta.mobile)
        general = meta.general_desc
        return cls(
            leading=re.compile(meta.leading_digits) if meta.leading_digits else None,
            lengths=frozenset(general.possible_length or ()) if general else frozenset(),
            general=_pattern(general.national_number_pattern) if general else None,
            types=tuple(
                (frozenset(d.possible_length or ()), d.national_number_pattern)
                for d in descs
                if d is not None and d.national_number_pattern
            ),
        )

    def valid(self, national: str) -> bool:
        """``phonenumbers``' type of the number is not UNKNOWN (``_number_type_helper``)."""
        size = len(national)
        if self.general is None or (self.lengths and size not in self.lengths):
            return False
        if not self.general.fullmatch(national):
            return False
        if size not in self.by_length:
            patterns = [p for lengths, p in self.types if not lengths or size in lengths]
            self.by_length[size] = (
                re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
            )
        combined = self.by_length[size]
        return combined is not None and combined.fullmatch(national) is not None


def _pattern(text: str | None) -> re.Pattern[str] | None:
    return re.compile(text) if text else None


@lru_cache(maxsize=512)
def _calling_code(code: int) -> tuple[re.Pattern[str] | None, tuple[_Region, ...]] | None:
    """The national prefix ``phonenumbers.parse`` may strip after ``+code``, and the regions
    of ``code`` in ``phonenumbers``' order; ``None`` for codes without geographic regions."""
    regions = []
    for name in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()):
        region = _Region.of(name)
        if region is None:
            return None
        regions.append(region)
    main = phonenumbers.PhoneMetadata.metadata_for_region(
        phonenumbers.region_code_for_country_code(code), None
    )
    if main is None or not regions:
        return None
    prefix = main.national_prefix_for_parsing
    return (re.compile(prefix) if prefix else None), tuple(regions)


def _e164(text: str) -> str | None:
    """Fast path: a number already in E.164 form (``+14155552671``) that is valid is returned
    as it is, without ``phonenumbers.parse`` and with the validity rules of ``phonenumbers``
    compiled once per region; ``None`` sends anything else down the full path (so do numbers
    that could start with a national prefix, which parsing strips). A property test keeps it
    equal to the full path."""
    if not _E164.fullmatch(text):
        return None
    digits = text[1:]
    for size in (1, 2, 3):  # country calling codes are prefix-free
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[size:]
            known = _calling_code(code)
            if known is None or not national or national[0] == "0":
                return None
            prefix, regions = known
            if prefix is not None and prefix.match(national):
                return None
            # the number's region, as phonenumbers.region_code_for_number finds it
            for region in regions:
                if len(regions) == 1 or (region.leading and region.leading.match(national)):
                    return text if region.valid(national) else None
                if region.leading is None and region.valid(national):
                    return text  # found as valid for this region
            return None
    return None


def normalize_phone(value: str, *, region: str) -> str:
    text = value.strip()
    fast = _e164(text)
    if fast is not None:
        return fast
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

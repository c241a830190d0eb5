"""Jinja filters a marketer needs, in the contact's locale and timezone (babel).

Every template is rendered with ``contact`` in its context; the locale-aware filters read the
contact's ``locale`` (``de_DE``, ``de-DE`` or ``fr``; unknown values fall back to ``en_US``) and
``timezone`` (IANA name; unknown values fall back to UTC)::

    {{ order.total | money("EUR") }}          1.234,56 €        (de_DE)
    {{ order.shipped_at | date }}             05.03.2026
    {{ order.shipped_at | datetime("short") }} 05.03.26, 10:30  (converted to Europe/Berlin)
    {{ contact | first_name("there") }}       the first name, or "there" when missing/blank
    {{ contact.attributes.city | default("your city") }}  also replaces None and ""

>>> money(Decimal("1234.56"), "EUR", locale="de_DE")
'1.234,56\\xa0€'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC
from datetime import date as date_type
from datetime import datetime as datetime_type
from datetime import timezone as dt_timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import pass_context
from jinja2.runtime import Context, Undefined

DEFAULT_LOCALE = "en_US"
DEFAULT_CURRENCY = "USD"


@lru_cache(maxsize=512)
def parse_locale(value: str | None) -> Locale:
    """A babel ``Locale`` for ``de_DE``/``de-DE``/``de``; ``en_US`` when unknown or empty."""
    if value:
        try:
            return Locale.parse(value.strip().replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            pass
    return Locale.parse(DEFAULT_LOCALE)


@lru_cache(maxsize=512)
def parse_timezone(value: str | None) -> ZoneInfo | dt_timezone:
    """A ``ZoneInfo`` for an IANA name; UTC when unknown or empty."""
    if value:
        try:
            return ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def _field(contact: Any, name: str) -> Any:
    if isinstance(contact, Mapping):
        return contact.get(name)
    return getattr(contact, name, None)


def _contact_of(ctx: Context) -> Any:
    return ctx.get("contact")


def money(
    amount: Any, currency: str | None = None, *, locale: str | None = None, fmt: str | None = None
) -> str:
    """``amount`` as currency in ``locale``."""
    amount = _defined(amount)
    return format_currency(
        Decimal(str(amount)),
        (currency or DEFAULT_CURRENCY).upper(),
        fmt,
        locale=parse_locale(locale),
    )


def _defined(value: Any) -> Any:
    """Raise Jinja's own "is undefined" error for a missing value, not a TypeError later."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


def _to_local(value: Any, tz: str | None) -> datetime_type | date_type:
    value = _defined(value)
    if isinstance(value, str):
        value = datetime_type.fromisoformat(value)
    if isinstance(value, datetime_type):
        if value.tzinfo is None:  # naive datetimes in the store are UTC
            value = value.replace(tzinfo=UTC)
        local: datetime_type = value.astimezone(parse_timezone(tz))
        return local
    if isinstance(value, date_type):
        return value
    raise TypeError(f"expected a date, datetime or ISO 8601 string, got {type(value).__name__}")


def _format_uncached(
    kind: str, value: Any, arg: str | None, locale: str | None, tz: str | None
) -> str:
    if kind == "money":
        return money(value, arg, locale=locale)
    if kind == "number":
        return format_decimal(value, arg, locale=parse_locale(locale))
    if kind == "percent":
        return format_percent(value, arg, locale=parse_locale(locale))
    local = _to_local(value, tz)
    if kind == "date":
        day = local.date() if isinstance(local, datetime_type) else local
        return format_date(day, arg or "medium", locale=parse_locale(locale))
    if not isinstance(local, datetime_type):
        if kind == "time":
            raise TypeError("the time filter needs a datetime, not a date")
        local = datetime_type(local.year, local.month, local.day)
    if kind == "time":
        return format_time(local, arg or "short", locale=parse_locale(locale))
    return format_datetime(local, arg or "medium", locale=parse_locale(locale))


_format_cached = lru_cache(maxsize=8192)(_format_uncached)


def _format(kind: str, ctx: Context, value: Any, arg: str | None) -> str:
    """Babel formatting is slow (tens of µs); a newsletter formats the same offer, price and
    date for thousands of contacts, so results are memoized per value, locale and timezone."""
    value = _defined(value)
    contact = _contact_of(ctx)
    locale, tz = _field(contact, "locale"), _field(contact, "timezone")
    try:
        return _format_cached(kind, value, arg, locale, tz)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        return _format_uncached(kind, value, arg, locale, tz)


@pass_context
def money_filter(ctx: Context, amount: Any, currency: str | None = None) -> str:
    if currency is None:
        attributes = _field(_contact_of(ctx), "attributes") or {}
        currency = attributes.get("currency") if isinstance(attributes, Mapping) else None
    return _format("money", ctx, amount, currency)


@pass_context
def date_filter(ctx: Context, value: Any, fmt: str = "medium") -> str:
    return _format("date", ctx, value, fmt)


@pass_context
def datetime_filter(ctx: Context, value: Any, fmt: str = "medium") -> str:
    return _format("datetime", ctx, value, fmt)


@pass_context
def time_filter(ctx: Context, value: Any, fmt: str = "short") -> str:
    return _format("time", ctx, value, fmt)


@pass_context
def number_filter(ctx: Context, value: Any, fmt: str | None = None) -> str:
    return _format("number", ctx, value, fmt)


@pass_context
def percent_filter(ctx: Context, value: Any, fmt: str | None = None) -> str:
    return _format("percent", ctx, value, fmt)


def default_filter(value: Any, fallback: Any = "", boolean: bool = False) -> Any:
    """Jinja's ``default``, but ``None`` (a missing optional field) counts as missing too."""
    if isinstance(value, Undefined) or value is None or (boolean and not value):
        return fallback
    return value


def first_name(contact: Any, fallback: str = "there") -> str:
    """The contact's first name, trimmed; ``fallback`` when missing or blank.

    >>> first_name({"first_name": "  ada "}), first_name({"first_name": None}, "friend")
    ('ada', 'friend')
    """
    if isinstance(contact, Undefined):
        return fallback
    name = contact if isinstance(contact, str) else _field(contact, "first_name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    return fallback


FILTERS: dict[str, Callable[..., Any]] = {
    "money": money_filter,
    "date": date_filter,
    "datetime": datetime_filter,
    "time": time_filter,
    "number": number_filter,
    "percent": percent_filter,
    "default": default_filter,
    "d": default_filter,
    "first_name": first_name,
}

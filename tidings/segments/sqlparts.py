"""SQL building blocks shared by the compiler: the evaluation context, typed comparisons and
typed access to JSON documents per dialect (SQLite ``json_*`` vs PostgreSQL ``jsonb_*``).

>>> from datetime import UTC, datetime
>>> ctx = Ctx("sqlite", datetime(2026, 1, 1, tzinfo=UTC), {})
>>> ctx.at(Ago(seconds=86400)).isoformat()
'2025-12-31T00:00:00+00:00'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Numeric,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import BIT, JSONB
from sqlalchemy.sql.elements import ColumnElement

from tidings.segments.rules import Ago

Expr = ColumnElement[Any]


class Unmoving(ValueError):
    """The rule compares with a time only a value can stand for (``Ctx.at``), not a bound
    parameter: its statement is built for each ``now``."""


@dataclass(frozen=True)
class Ctx:
    dialect: str
    now: datetime
    json_columns: dict[str, Any]
    moving: dict[str, float] | None = None
    """When set, ``now`` (``until``) and the times before it (``since``) are bound
    parameters, named here with how many seconds before now each stands for: one statement
    then serves every ``now`` (``moving_params`` gives the values)."""

    def at(self, value: datetime | Ago) -> datetime:
        if isinstance(value, Ago):
            if self.moving is not None:
                raise Unmoving(f"a time {value.seconds:g} s before now is compared as a value")
            return self.now - timedelta(seconds=value.seconds)
        return value

    def since(self, seconds: float) -> Any:
        """``now - seconds`` for a comparison with a time column: a value, or (``moving``) a
        bound parameter that takes the column's type."""
        if self.moving is None:
            return self.now - timedelta(seconds=seconds)
        name = f"now_less_{round(seconds * 1_000_000)}us" if seconds else "now"
        self.moving[name] = seconds
        return bindparam(name, required=True)

    @property
    def until(self) -> Any:
        """``now`` for a comparison with a time column (``since(0)``)."""
        return self.since(0)


def moving_params(moving: dict[str, float], now: datetime) -> dict[str, datetime]:
    """The values of a ``moving`` statement's time parameters at ``now``."""
    return {name: now - timedelta(seconds=seconds) for name, seconds in moving.items()}


def value_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, datetime | Ago):
        return "time"
    return "text"


def compare_op(left: Expr, op: str, right: Any) -> Expr:
    result: Expr
    match op:
        case "eq":
            result = left == right
        case "gt":
            result = left > right
        case "gte":
            result = left >= right
        case "lt":
            result = left < right
        case "lte":
            result = left <= right
        case _:
            raise AssertionError(op)
    return result


def text_contains(text: Expr, needle: str, ctx: Ctx) -> Expr:
    """Case-sensitive substring test on both dialects (SQLite's LIKE ignores ASCII case)."""
    position = func.instr(text, needle) if ctx.dialect == "sqlite" else func.strpos(text, needle)
    return position > 0


def name_matches(column: Expr, pattern: str, ctx: Ctx) -> Expr:
    """``column`` is the name ``pattern``, where ``*`` matches any text; case-sensitive on both
    dialects (SQLite ``GLOB``, PostgreSQL ``LIKE``, each with its own wildcards escaped).

    >>> from sqlalchemy import column
    >>> ctx = Ctx("postgresql", datetime(2026, 1, 1, tzinfo=UTC), {})
    >>> print(name_matches(column("name"), "check_out.*", ctx))
    name LIKE :name_1 ESCAPE '\\'
    """
    if "*" not in pattern:
        return column == pattern
    if ctx.dialect == "sqlite":
        glob = "".join(f"[{ch}]" if ch in "?[" else ch for ch in pattern)
        return column.op("GLOB", is_comparison=True)(glob)
    like = "".join("\\" + ch if ch in "%_\\" else ch for ch in pattern).replace("*", "%")
    return column.like(like, escape="\\")


def stable_bucket(external_id: Expr, email: Expr, contact_id: Expr, seed: str, ctx: Ctx) -> Expr:
    """The contact's bucket (0..9999) for ``seed``, hashed on a stable identity: the external
    id; without one the email address; without that the internal id (which a re-import
    changes). ``crm.types.bucket_of`` is the same function in Python.
    """
    identity = func.coalesce(
        func.nullif(external_id, ""),
        literal("email:") + func.nullif(email, ""),
        literal("id:") + cast(contact_id, String),
    )
    if ctx.dialect == "sqlite":
        return func.tidings_bucket(identity, seed)
    digest = func.md5(literal(f"{seed}:") + identity)
    first32 = cast(cast(literal("x") + func.substr(digest, 1, 8), BIT(32)), BigInteger)
    return first32 % 10000


def _sqlite_path(path: tuple[str, ...]) -> str:
    for key in path:
        if '"' in key:
            raise ValueError(f"attribute names cannot contain a double quote: {key!r}")
    return "$" + "".join(f'."{key}"' for key in path)


class JsonPath:
    """Typed access to one path of a JSON column, per dialect."""

    def __init__(self, column: Any, path: tuple[str, ...], ctx: Ctx) -> None:
        self.column, self.path, self.ctx = column, path, ctx
        self.sqlite = ctx.dialect == "sqlite"

    def type(self) -> Expr:
        if self.sqlite:
            return func.json_type(self.column, _sqlite_path(self.path))
        return func.jsonb_typeof(self.raw())

    def raw(self) -> Expr:
        return func.jsonb_extract_path(self.column, *self.path)

    def text(self) -> Expr:
        if self.sqlite:
            return func.json_extract(self.column, _sqlite_path(self.path))
        return func.jsonb_extract_path_text(self.column, *self.path)

    def string(self) -> Expr:
        return case((self.type() == ("text" if self.sqlite else "string"), self.text()))

    def number(self) -> Expr:
        if self.sqlite:
            return case((self.type().in_(["integer", "real"]), self.text()))
        return case((self.type() == "number", cast(self.text(), Numeric)))

    def is_bool(self, value: bool) -> Expr:
        if self.sqlite:
            return self.type() == ("true" if value else "false")
        return and_(self.type() == "boolean", self.text() == ("true" if value else "false"))

    def present(self) -> Expr:
        """A value is there: not missing, not JSON null, not the empty string."""
        kind = func.coalesce(self.type(), "null")
        empty = and_(kind == ("text" if self.sqlite else "string"), self.text() == "")
        return and_(kind != "null", ~empty)

    def time(self) -> Expr:
        """An ISO 8601 string as a UTC time to the microsecond (no offset: read as UTC), else
        NULL. Digits after the sixth of a second are dropped on both dialects."""
        if self.sqlite:
            return _sqlite_micro_time(self.string())
        text = func.regexp_replace(self.text(), r"(\.\d{6})\d+", r"\1")
        with_offset = cast(text, DateTime(timezone=True))
        as_utc = func.timezone("UTC", cast(text, DateTime(timezone=False)))
        iso = and_(self.type() == "string", text.regexp_match(r"^\d{4}-\d{2}-\d{2}"))
        return case(
            (iso, case((text.regexp_match(r"(Z|[+-]\d{2}(:?\d{2})?)$"), with_offset), else_=as_utc))
        )

    def time_value(self, value: datetime) -> Any:
        value = value.astimezone(UTC)
        if self.sqlite:
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return literal(value, DateTime(timezone=True))

    def array_contains(self, value: str | int | float | Decimal) -> Expr:
        if self.sqlite:
            elements = func.json_each(self.column, _sqlite_path(self.path)).table_valued("value")
            found = exists(
                select(literal(1)).select_from(elements).where(elements.c.value == value)
            )
            return and_(self.type() == "array", found)
        probe = cast(literal(json.dumps([value], default=str)), JSONB)
        return and_(self.type() == "array", self.raw().op("@>", is_comparison=True)(probe))

    def contains_value(self, value: Any) -> Expr:
        """PostgreSQL: ``col @> '{"a": {"b": value}}'``, typed equality (and GIN-indexable)."""
        document: Any = float(value) if isinstance(value, Decimal) else value
        for key in reversed(self.path):
            document = {key: document}
        probe = cast(literal(json.dumps(document)), JSONB)
        contained: Expr = self.column.op("@>", is_comparison=True)(probe)
        return contained

    def compare(self, op: str, value: Any) -> Expr:
        kind = value_kind(value)
        if op == "eq" and kind != "time" and not self.sqlite:
            return self.contains_value(value)
        if kind == "bool":
            if op != "eq":
                raise ValueError(f"true/false can only be compared with eq or ne, not {op}")
            return self.is_bool(bool(value))
        if kind == "time":
            return compare_op(self.time(), op, self.time_value(self.ctx.at(value)))
        if kind == "number":
            return compare_op(self.number(), op, value)
        return compare_op(self.string(), op, value)


def _sqlite_micro_time(text: Expr) -> Expr:
    """SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC from an ISO 8601 string.

    ``strftime`` keeps only milliseconds (and rounds 59.9999 s up into the next minute), so
    the fraction is cut out before ``strftime`` reads the rest (offset included) and put back
    after it, padded to six digits: an offset never changes the fraction of a second.
    """
    dotted = func.substr(text, 20, 1) == "."
    fraction = case((dotted, func.substr(text, 21, type_=String)), else_=literal(""))
    digits = func.length(fraction) - func.length(func.ltrim(fraction, "0123456789"))
    head = func.substr(text, 1, 19, type_=String)
    rest = case((dotted, head + func.substr(fraction, digits + 1, type_=String)), else_=text)
    micro = func.substr(func.substr(fraction, 1, digits, type_=String) + "000000", 1, 6)
    seconds = func.strftime("%Y-%m-%d %H:%M:%S", rest, type_=String)
    # like PostgreSQL's test: a date first (strftime would read '34' as a Julian day number)
    iso = text.op("GLOB", is_comparison=True)("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*")
    return case((iso, seconds + "." + micro))

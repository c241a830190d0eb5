"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

#: Primary keys: BIGINT on PostgreSQL, INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements).
IdType = BigInteger().with_variant(Integer(), "sqlite")

#: JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    and given back their ``tzinfo`` on the way out. A naive value on the way in is refused: it
    is always a bug to guess what time zone a timestamp meant.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give it a tzinfo (UTC if unsure)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        assert isinstance(moment, datetime)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An aware datetime: a naive one is read as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_time(value: str) -> datetime:
    """An ISO 8601 time as an aware datetime (no offset: UTC); ValueError if it is not one."""
    return as_utc(datetime.fromisoformat(value))


#: How many buckets a seed shuffles contacts into (segment ``sample:`` and ``split:``).
BUCKETS = 10000


def bucket_of(identity: str, seed: str) -> int:
    """A contact's stable bucket (0..9999) for ``seed``: the first 32 bits of
    ``md5(seed + ":" + identity)`` modulo 10000, computed the same way by PostgreSQL's ``md5``
    and by the SQLite function ``tidings_bucket`` (registered on every SQLite connection).

    >>> bucket_of("c-1001", "spring")
    8015
    """
    digest = hashlib.md5(f"{seed}:{identity}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS

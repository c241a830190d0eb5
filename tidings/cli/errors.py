"""Say a service that is down (PostgreSQL, Redis) in one line, instead of a traceback.

``run_guarded`` asks ``service_error`` about any exception a command lets out; a known one
becomes the line the user reads, anything else keeps its traceback (a bug should be seen).

>>> import redis
>>> service_error(redis.exceptions.ConnectionError("Connection refused"),
...               redis_url="redis://:secret@127.0.0.1:6390/0")
'cannot reach Redis at redis://:***@127.0.0.1:6390/0 (Connection refused): start it (e.g. `redis-server --daemonize yes`) or point TIDINGS_REDIS_URL at a running server'
"""  # noqa: E501

from __future__ import annotations

import sys
from urllib.parse import urlsplit, urlunsplit

CONNECTION_WORDS = (
    "connection refused",
    "could not connect",
    "connection failed",
    "connection to server",
    "server closed the connection",
    "timeout expired",
    "name or service not known",
    "could not translate host name",
    "no route to host",
    "password authentication failed",
    "does not exist",  # database "x" does not exist
)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else error.__class__.__name__


def _settings_urls() -> tuple[str | None, str | None]:
    try:
        from tidings.config import get_settings

        settings = get_settings()
    except Exception:  # the settings themselves are wrong: the error says enough
        return None, None
    return settings.database_url, settings.redis_url


def service_error(
    exc: BaseException, *, database_url: str | None = None, redis_url: str | None = None
) -> str | None:
    """One line saying which service failed, where, why and what to do; None if ``exc`` is
    not a service failure."""
    if database_url is None and redis_url is None:
        database_url, redis_url = _settings_urls()
    redis = sys.modules.get("redis.exceptions")
    if redis is not None and isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        where = redact(redis_url) if redis_url else "TIDINGS_REDIS_URL"
        return (
            f"cannot reach Redis at {where} ({_first_line(exc)}): start it (e.g. "
            "`redis-server --daemonize yes`) or point TIDINGS_REDIS_URL at a running server"
        )
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy is None or not isinstance(exc, sqlalchemy.DBAPIError):
        return None
    where = redact(database_url) if database_url else "TIDINGS_DATABASE_URL"
    reason = _first_line(exc.orig) if exc.orig is not None else _first_line(exc)
    lowered = reason.lower()
    undefined_table = type(exc.orig).__name__ == "UndefinedTable" or "no such table" in lowered
    if undefined_table:
        return f"the store at {where} is not migrated ({reason}): run `tidings db upgrade` first"
    if isinstance(exc, sqlalchemy.OperationalError | sqlalchemy.InterfaceError) and (
        exc.connection_invalidated or any(word in lowered for word in CONNECTION_WORDS)
    ):
        server = "PostgreSQL" if "postgres" in where else "the database server"
        return (
            f"cannot connect to the store at {where} ({reason}): start {server} or fix "
            "TIDINGS_DATABASE_URL"
        )
    if "unable to open database file" in lowered:
        return f"cannot open the store at {where} ({reason}): does its folder exist?"
    if isinstance(exc, sqlalchemy.OperationalError):
        return f"the store at {where} failed: {reason}"
    return None

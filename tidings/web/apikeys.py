"""API keys for the event API, stored hashed, and ``Idempotency-Key`` responses.

A key reads ``tid_<prefix>_<secret>``; only ``sha256(key)`` and the prefix are stored, so the
key is shown once, at creation (``tidings apikey create NAME``), and a leaked database does not
leak usable keys. Revoked keys (``tidings apikey revoke PREFIX``) are refused at once.

>>> key = create_key(engine, name="shop")                           # doctest: +SKIP
>>> authenticate(engine, key.secret).name                           # doctest: +SKIP
'shop'
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from tidings.crm.db import insert_ignore
from tidings.crm.models import ApiKey, IdempotentRequest
from tidings.crm.types import utcnow

KEY_PREFIX = "tid"


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: int
    prefix: str
    name: str
    secret: str  # the whole key: shown once, never stored


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    prefix: str
    name: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(db: Engine, *, name: str) -> CreatedKey:
    prefix = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with db.begin() as conn:
        key_id = conn.execute(
            insert(ApiKey)
            .values(prefix=prefix, key_hash=_hash(secret), name=name, created_at=utcnow())
            .returning(ApiKey.id)
        ).scalar_one()
    return CreatedKey(int(key_id), prefix, name, secret)


def revoke_key(db: Engine, *, prefix: str) -> bool:
    """Revoke the key with this prefix (or whole key); False if there is no such active key."""
    if prefix.startswith(f"{KEY_PREFIX}_"):
        prefix = prefix.split("_")[1]
    with db.begin() as conn:
        result = conn.execute(
            update(ApiKey)
            .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    return bool(result.rowcount)


def list_keys(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(ApiKey.prefix, ApiKey.name, ApiKey.created_at, ApiKey.revoked_at).order_by(
                ApiKey.id
            )
        ).mappings()
        return [dict(r) for r in rows]


def authenticate(db: Engine, key: str) -> Principal | None:
    """The key's owner, or None for an unknown, malformed or revoked key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or len(parts[1]) > 32:
        return None
    with db.connect() as conn:
        row = conn.execute(
            select(ApiKey.id, ApiKey.key_hash, ApiKey.name, ApiKey.revoked_at).where(
                ApiKey.prefix == parts[1]
            )
        ).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, _hash(key)):
        return None
    return Principal(int(row.id), parts[1], str(row.name))


def request_hash(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


class IdempotencyStore:
    """Remembered responses per (API key, Idempotency-Key), in the store (``ttl_hours``)."""

    def __init__(self, db: Engine, *, ttl_hours: int) -> None:
        self.db = db
        self.ttl = timedelta(hours=ttl_hours)

    def get(self, key_id: int, key: str) -> tuple[str, int, dict[str, Any]] | None:
        with self.db.connect() as conn:
            row = conn.execute(
                select(
                    IdempotentRequest.request_hash,
                    IdempotentRequest.status_code,
                    IdempotentRequest.response,
                    IdempotentRequest.created_at,
                ).where(IdempotentRequest.api_key_id == key_id, IdempotentRequest.key == key)
            ).first()
        if row is None or row.created_at < utcnow() - self.ttl:
            return None
        return str(row.request_hash), int(row.status_code), dict(row.response)

    def put(
        self, key_id: int, key: str, digest: str, status: int, response: dict[str, Any]
    ) -> None:
        table = IdempotentRequest.__table__
        now = utcnow()
        with self.db.begin() as conn:
            conn.execute(
                delete(IdempotentRequest).where(
                    IdempotentRequest.api_key_id == key_id,
                    IdempotentRequest.key == key,
                    IdempotentRequest.created_at < now - self.ttl,
                )
            )
            conn.execute(
                insert_ignore(conn, table).values(  # type: ignore[arg-type]
                    api_key_id=key_id,
                    key=key,
                    request_hash=digest,
                    status_code=status,
                    response=response,
                    created_at=now,
                )
            )


class RedisIdempotencyStore:
    """The same, in Redis (``SET NX`` with a TTL): used with the buffer, so a request can be
    answered while the store is down."""

    def __init__(self, redis_url: str, *, ttl_hours: int, namespace: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.ttl = ttl_hours * 3600
        self.namespace = namespace

    def _key(self, key_id: int, key: str) -> str:
        return f"{self.namespace}:idem:{key_id}:{hashlib.sha256(key.encode()).hexdigest()}"

    def get(self, key_id: int, key: str) -> tuple[str, int, dict[str, Any]] | None:
        import orjson

        raw = self.client.get(self._key(key_id, key))
        if raw is None:
            return None
        stored = orjson.loads(raw)  # type: ignore[arg-type]
        return str(stored["h"]), int(stored["s"]), dict(stored["r"])

    def put(
        self, key_id: int, key: str, digest: str, status: int, response: dict[str, Any]
    ) -> None:
        import orjson

        value = orjson.dumps({"h": digest, "s": status, "r": response})
        self.client.set(self._key(key_id, key), value, nx=True, ex=self.ttl)

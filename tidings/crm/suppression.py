"""Erased people stay erased: keyed-hash suppressions checked on every write that names one.

An erasure (crm/erasure.py) keeps, of the person, only an HMAC-SHA256 of each of their
normalised identities (email, E.164 phone, external id) under ``TIDINGS_SUPPRESSION_KEY``: the
store can tell that a later import row or API call names them, and cannot tell who they were.
Such a write is refused and reported ("suppressed"), never silently dropped, until the person
consents again: ``release`` lifts the suppressions of the identities named by an explicit new
consent (``POST /v1/contacts`` with ``"reconsent": true`` and a granted consent; see
docs/privacy.md). An import never lifts one: a file is a copy of an earlier state.

Two entry points for writers, both on normalised values:

* ``suppressed_rows(conn, identities)``: a batch (an import batch, an API array), one query;
  returns ``{index: Suppressed}`` for the rows to leave out;
* ``check_identity(conn, identity)``: one write (an event or trigger naming a contact).

>>> with engine.begin() as conn:                                          # doctest: +SKIP
...     hits = suppressed_rows(conn, [Identity(email="ann@example.com"), Identity("C9")])
>>> hits[0].reason()                                                      # doctest: +SKIP
'email belongs to a contact erased on 2026-11-30 (erasure #3): ...'
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, exists, insert, select, update
from sqlalchemy.orm import Session

from tidings.config import Settings, get_settings
from tidings.crm.db import among
from tidings.crm.models import Erasure, ErasureSuppression
from tidings.crm.types import utcnow

log = logging.getLogger(__name__)
erasures_t: Table = Erasure.__table__  # type: ignore[assignment]
suppressed_t: Table = ErasureSuppression.__table__  # type: ignore[assignment]

KINDS = ("external_id", "email", "phone")
CHANNEL_KIND = {"email": "email", "sms": "phone"}
"""The identity kind of a channel's addresses."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a row names, normalised as the store keeps it (email lower case, phone E.164)."""

    external_id: str | None = None
    email: str | None = None
    phone: str | None = None

    def values(self) -> list[tuple[str, str]]:
        return [(kind, v) for kind in KINDS if (v := getattr(self, kind))]


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Why a row is left out: which of its identities belongs to an erased person."""

    kind: str
    erasure_id: int
    erased_at: datetime

    def reason(self) -> str:
        return (
            f"suppressed: this {self.kind} belongs to a contact erased on "
            f"{self.erased_at.date().isoformat()} (erasure #{self.erasure_id}); it is not "
            "stored again unless the person consents again (docs/privacy.md)"
        )


class Hasher:
    """HMAC-SHA256 (RFC 2104) of ``kind \x1f value`` under one key; ``key_id`` names the key.

    The padded key's hash states are computed once and copied per digest: the same bytes as
    ``hmac.new(key, msg, sha256)``, about four times cheaper (an import hashes every row).
    """

    def __init__(self, key: str | bytes) -> None:
        raw = key.encode("utf-8") if isinstance(key, str) else key
        if not raw:
            raise ValueError("the suppression key must not be empty")
        if len(raw) > 64:
            raw = hashlib.sha256(raw).digest()
        padded = raw.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
        self.key_id = self.digest("key-id", "tidings")[:16]

    def digest(self, kind: str, value: str) -> str:
        inner = self._inner.copy()
        inner.update(f"{kind}\x1f{value}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def hasher(settings: Settings | None = None) -> Hasher:
    """The hasher of TIDINGS_SUPPRESSION_KEY, else TIDINGS_SECRET_KEY, else the development key
    (the tracking module's, with its warning)."""
    from tidings.templates.tracking import signing_key

    settings = settings or get_settings()
    if settings.suppression_key is not None:
        return Hasher(settings.suppression_key.get_secret_value())
    return Hasher(signing_key(settings))


_checked_keys: set[tuple[str, str]] = set()


def _warn_on_other_keys(conn: Connection | Session, current: str) -> None:
    """Once per store and key: say so if earlier erasures were hashed with another key."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    where = (str(bind.engine.url), current)
    if where in _checked_keys:
        return
    _checked_keys.add(where)
    others = conn.execute(
        select(suppressed_t.c.key_id).where(suppressed_t.c.key_id != current).distinct().limit(5)
    ).scalars()
    found = list(others)
    if found:
        log.warning(
            "erasure suppressions made with another TIDINGS_SUPPRESSION_KEY (key ids %s) are "
            "not recognised with the current key (%s): restore the old key, or those people "
            "can be imported again",
            ", ".join(found),
            current,
        )


def digests(identities: Sequence[Identity], hashed: Hasher) -> dict[str, list[tuple[int, str]]]:
    """The keyed hashes of ``identities`` (normalised): each lists the ``(index, kind)`` pairs
    that hash to it."""
    wanted: dict[str, list[tuple[int, str]]] = {}
    digest = hashed.digest
    for index, identity in enumerate(identities):
        for kind, value in (
            ("external_id", identity.external_id),
            ("email", identity.email),
            ("phone", identity.phone),
        ):  # KINDS, spelt out: an import checks every row
            if value:
                wanted.setdefault(digest(kind, value), []).append((index, kind))
    return wanted


def any_suppressed(conn: Connection | Session) -> bool:
    """Whether anyone is suppressed now: most stores have erased nobody, and then a batch need
    not be hashed at all (an import would hash every identity of every row)."""
    query = select(exists().where(suppressed_t.c.released_at.is_(None)))
    return bool(conn.execute(query).scalar())


def suppressed_rows(
    conn: Connection | Session,
    identities: Sequence[Identity],
    *,
    settings: Settings | None = None,
    hashed: Hasher | None = None,
) -> dict[int, Suppressed]:
    """The rows of a batch that name an erased person: ``{index in identities: why}``.

    Call it with the batch's normalised rows before writing them and leave those rows out
    (reporting each): one query per batch, by the unique digest index."""
    hashed = hashed or hasher(settings)
    wanted = digests(identities, hashed)
    if not wanted:
        return {}
    _warn_on_other_keys(conn, hashed.key_id)
    found: dict[int, Suppressed] = {}
    rows = conn.execute(
        select(suppressed_t.c.digest, erasures_t.c.id, erasures_t.c.erased_at)
        .join(erasures_t, erasures_t.c.id == suppressed_t.c.erasure_id)
        .where(among(conn, suppressed_t.c.digest, wanted), suppressed_t.c.released_at.is_(None))
    )
    for digest, erasure_id, erased_at in rows:
        for index, kind in wanted[digest]:
            found.setdefault(index, Suppressed(kind, erasure_id, erased_at))
    return found


def check_identity(
    conn: Connection | Session, identity: Identity, *, settings: Settings | None = None
) -> Suppressed | None:
    """Whether one write (an event, a trigger, a contact) names an erased person."""
    return suppressed_rows(conn, [identity], settings=settings).get(0)


def erased_addresses(
    conn: Connection | Session,
    channel: str,
    addresses: Iterable[str],
    *,
    settings: Settings | None = None,
) -> set[str]:
    """Those of ``addresses`` (of ``channel``) that belong to erased people: a bounce or a STOP
    arriving after the erasure must not store them again in clear."""
    kind = CHANNEL_KIND.get(channel)
    given = sorted(set(addresses))
    if kind is None or not given:
        return set()
    identities = [
        Identity(**{kind: a.strip().lower() if kind == "email" else a.strip()}) for a in given
    ]
    hits = suppressed_rows(conn, identities, settings=settings)
    return {given[i] for i in hits}


def suppress_identity(
    conn: Connection,
    identity: Identity,
    *,
    erasure_id: int,
    now: datetime,
    settings: Settings | None = None,
) -> int:
    """Keep the keyed hashes of ``identity`` as suppressions of ``erasure_id``; a released
    one is suppressed again. Returns how many are (newly) in force."""
    hashed = hasher(settings)
    rows = {hashed.digest(kind, v): kind for kind, v in identity.values()}
    if not rows:
        return 0
    known: dict[str, datetime | None] = {
        digest: released
        for digest, released in conn.execute(
            select(suppressed_t.c.digest, suppressed_t.c.released_at).where(
                suppressed_t.c.digest.in_(rows)
            )
        )
    }
    fresh = [
        {
            "digest": d,
            "kind": kind,
            "key_id": hashed.key_id,
            "erasure_id": erasure_id,
            "created_at": now,
        }
        for d, kind in rows.items()
        if d not in known
    ]
    if fresh:
        conn.execute(insert(suppressed_t), fresh)
    again = [d for d, released in known.items() if released is not None]
    if again:
        conn.execute(
            update(suppressed_t)
            .where(suppressed_t.c.digest.in_(again))
            .values(erasure_id=erasure_id, released_at=None, released_by=None, created_at=now)
        )
    return len(fresh) + len(again)


def release(
    conn: Connection | Session,
    identities: Iterable[Identity],
    *,
    by: str,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> int:
    """Lift the suppressions of identities whose person consented again (recorded with ``by``
    and the time). Only an explicit new consent may call this: the ``reconsent`` flag of
    ``POST /v1/contacts``, or a confirmed double opt-in. Returns how many were lifted."""
    hashed = hasher(settings)
    digests = sorted({hashed.digest(k, v) for i in identities for k, v in i.values()})
    if not digests:
        return 0
    result = conn.execute(
        update(suppressed_t)
        .where(suppressed_t.c.digest.in_(digests), suppressed_t.c.released_at.is_(None))
        .values(released_at=now or utcnow(), released_by=by[:255])
    )
    return int(getattr(result, "rowcount", 0) or 0)

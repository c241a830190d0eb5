"""Find live (not erased) contacts by id, external id or email, many at once.

>>> found = Found.of(conn, external_ids=["C0002"], emails=["ann@shop.example"])  # doctest: +SKIP
>>> found.by_external_id.get("C0002")                                 # doctest: +SKIP
2
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, union_all

from tidings.crm.db import among
from tidings.crm.models import Contact

CHUNK = 5000  # values of each kind per statement (SQLite binds each one)


@dataclass
class Found:
    """The contacts that matched: their ids, and id by external id and by (lower-case) email.
    Two contacts sharing an email: the older one (lower id) is the email's."""

    ids: set[int] = field(default_factory=set)
    by_external_id: dict[str, int] = field(default_factory=dict)
    by_email: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        conn: Connection,
        *,
        ids: Collection[int] = (),
        external_ids: Collection[str] = (),
        emails: Collection[str] = (),
    ) -> Found:
        """Erased contacts are never found (they enter no journey and take no event). One
        index lookup per kind, each with one array parameter on PostgreSQL (an ``OR`` of
        ``IN`` lists can fall to a sequential scan under a generic plan)."""
        found = cls()
        kinds: list[tuple[Any, list[Any]]] = [
            (Contact.id, sorted(ids)),
            (Contact.external_id, sorted(external_ids)),
            (Contact.email, sorted(emails)),
        ]
        columns = (Contact.id, Contact.external_id, Contact.email)
        rows: set[tuple[int, str | None, str | None]] = set()
        for start in range(0, max(len(values) for _, values in kinds), CHUNK):
            lookups = [
                select(*columns).where(
                    among(conn, column, values[start : start + CHUNK]),
                    Contact.erased_at.is_(None),
                )
                for column, values in kinds
                if values[start : start + CHUNK]
            ]
            # plain tuples (SQLAlchemy rows compare in Python, ~2 us a comparison), fetched at
            # once (iterating a result fetches row by row)
            rows.update(map(tuple, conn.execute(union_all(*lookups)).all()))
        for cid, ext, email in sorted(rows):
            found.ids.add(cid)
            if ext:
                found.by_external_id[ext] = cid
            if email:
                found.by_email.setdefault(email, cid)
        return found

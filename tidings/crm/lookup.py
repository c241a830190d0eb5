"""Find live (not erased) contacts by id, external id or email, many at once.

>>> found = Found.of(conn, external_ids=["C0002"], emails=["ann@shop.example"])  # doctest: +SKIP
>>> found.by_external_id.get("C0002")                                 # doctest: +SKIP
2
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import Connection, or_, select

from tidings.crm.models import Contact

CHUNK = 1000  # values of each kind per statement


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
        """Erased contacts are never found (they enter no journey and take no event)."""
        found = cls()
        id_list, ext_list, email_list = sorted(ids), sorted(external_ids), sorted(emails)
        for start in range(0, max(len(id_list), len(ext_list), len(email_list)), CHUNK):
            part = slice(start, start + CHUNK)
            rows = conn.execute(
                select(Contact.id, Contact.external_id, Contact.email)
                .where(
                    or_(
                        Contact.id.in_(id_list[part]),
                        Contact.external_id.in_(ext_list[part]),
                        Contact.email.in_(email_list[part]),
                    ),
                    Contact.erased_at.is_(None),
                )
                .order_by(Contact.id)
            )
            for cid, ext, email in rows:
                found.ids.add(cid)
                if ext:
                    found.by_external_id[ext] = cid
                if email:
                    found.by_email.setdefault(email, cid)
        return found

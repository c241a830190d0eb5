"""Data quality of the CRM store: completeness, freshness, uniqueness.

>>> from tidings.crm.db import make_engine, upgrade
>>> engine = make_engine("sqlite:///:memory:"); upgrade(engine)
>>> report = quality_report(engine=engine, stale_days=365)
>>> report.contacts, report.duplicates["same_email"].groups
(0, 0)

Completeness is counted in SQL per field and per attribute key; duplicates with the same
normalized email or phone are grouped in SQL. Near-identical names with near-identical phones
(one digit apart, a typo) are found by streaming contacts ordered by a blocking key (the last
four digits of the phone, then the rest), so memory stays bounded by the largest block.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from difflib import SequenceMatcher
from itertools import groupby
from typing import Any

from sqlalchemy import Engine, Table, func, select, text

from tidings.crm.models import Contact, Event, Order
from tidings.crm.types import utcnow

CONTACT_FIELDS = ("external_id", "email", "phone", "first_name", "last_name", "locale", "timezone")
NAME_SIMILARITY = 0.85
contacts_t: Table = Contact.__table__  # type: ignore[assignment]


@dataclass
class Completeness:
    field: str
    filled: int
    total: int

    @property
    def percent(self) -> float:
        return round(100.0 * self.filled / self.total, 1) if self.total else 0.0


@dataclass
class DuplicateGroups:
    """``groups`` counts every group found; ``samples`` lists the first few, each a list of ids."""

    reason: str
    groups: int = 0
    contacts: int = 0
    samples: list[list[dict[str, Any]]] = field(default_factory=list)


@dataclass
class QualityReport:
    generated_at: datetime
    stale_days: int
    contacts: int
    completeness: list[Completeness]
    attributes: list[Completeness]
    stale_contacts: int
    freshness: dict[str, datetime | None]
    totals: dict[str, int]
    duplicates: dict[str, DuplicateGroups]

    def to_dict(self) -> dict[str, Any]:
        def fields(items: Iterable[Completeness]) -> list[dict[str, Any]]:
            return [{**asdict(c), "percent": c.percent} for c in items]

        return {
            "generated_at": self.generated_at.isoformat(),
            "contacts": self.contacts,
            "completeness": fields(self.completeness),
            "attributes": fields(self.attributes),
            "staleness": {"stale_days": self.stale_days, "stale_contacts": self.stale_contacts},
            "freshness": {k: v.isoformat() if v else None for k, v in self.freshness.items()},
            "totals": self.totals,
            "duplicates": {k: asdict(v) for k, v in self.duplicates.items()},
        }


def _attribute_counts(engine: Engine) -> list[tuple[str, int]]:
    if engine.dialect.name == "postgresql":
        sql = (
            "SELECT k, count(*) FROM contacts, jsonb_object_keys(attributes) AS k "
            "WHERE jsonb_typeof(attributes) = 'object' GROUP BY k ORDER BY count(*) DESC, k"
        )
    else:
        sql = (
            "SELECT j.key, count(*) FROM contacts, json_each(contacts.attributes) AS j "
            "WHERE json_type(contacts.attributes) = 'object' "
            "GROUP BY j.key ORDER BY count(*) DESC, j.key"
        )
    with engine.connect() as conn:
        return [(str(k), int(n)) for k, n in conn.execute(text(sql))]


def _exact_duplicates(engine: Engine, column: str, samples: int) -> DuplicateGroups:
    col = contacts_t.c[column]
    result = DuplicateGroups(reason=f"same {column}")
    keyed = (
        select(col.label("key"), func.count().label("n"))
        .where(col.is_not(None))
        .group_by(col)
        .having(func.count() > 1)
        .subquery()
    )
    with engine.connect() as conn:
        groups, members = conn.execute(
            select(func.count(), func.coalesce(func.sum(keyed.c.n), 0))
        ).one()
        result.groups, result.contacts = int(groups), int(members)
        keys = (
            conn.execute(select(keyed.c.key).order_by(keyed.c.n.desc(), keyed.c.key).limit(samples))
            .scalars()
            .all()
        )
        rows = (
            conn.execute(
                select(
                    contacts_t.c.id,
                    contacts_t.c.external_id,
                    contacts_t.c.email,
                    contacts_t.c.phone,
                    contacts_t.c.first_name,
                    contacts_t.c.last_name,
                )
                .where(col.in_(keys))
                .order_by(col, contacts_t.c.id)
            )
            .mappings()
            .all()
        )
    for _, members_rows in groupby(rows, key=lambda r: r[column]):
        result.samples.append([dict(r) for r in members_rows])
    return result


def _fold(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return " ".join("".join(c for c in decomposed if c.isalnum() or c.isspace()).split())


def _one_apart(a: str, b: str) -> bool:
    """Same length and exactly one digit different (a typo), or identical."""
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) <= 1


def _blocks(engine: Engine, key: Any) -> Iterator[list[dict[str, Any]]]:
    query = (
        select(
            contacts_t.c.id,
            contacts_t.c.external_id,
            contacts_t.c.email,
            contacts_t.c.phone,
            contacts_t.c.first_name,
            contacts_t.c.last_name,
            key.label("block"),
        )
        .where(
            contacts_t.c.phone.is_not(None),
            (contacts_t.c.first_name.is_not(None)) | (contacts_t.c.last_name.is_not(None)),
        )
        .order_by(key, contacts_t.c.id)
        .execution_options(yield_per=5000)
    )
    with engine.connect() as conn:
        for _, rows in groupby(conn.execute(query).mappings(), key=lambda r: r["block"]):
            block = [dict(r) for r in rows]
            if len(block) > 1:
                yield block


def _similar_people(engine: Engine, samples: int) -> DuplicateGroups:
    """Pairs with near-identical names and phones one digit apart (same phone is its own kind)."""
    result = DuplicateGroups(reason="near-identical name and phone")
    phone = contacts_t.c.phone
    length = func.length(phone)
    pairs: set[tuple[int, int]] = set()
    people: dict[int, dict[str, Any]] = {}
    for key in (func.substr(phone, length - 3), func.substr(phone, 1, length - 4)):
        for block in _blocks(engine, key):
            for i, a in enumerate(block):
                name_a = _fold(f"{a['first_name'] or ''} {a['last_name'] or ''}")
                for b in block[i + 1 :]:
                    if a["phone"] == b["phone"] or not _one_apart(a["phone"], b["phone"]):
                        continue
                    name_b = _fold(f"{b['first_name'] or ''} {b['last_name'] or ''}")
                    if SequenceMatcher(None, name_a, name_b).ratio() >= NAME_SIMILARITY:
                        pairs.add((a["id"], b["id"]))
                        if len(people) < samples * 4:
                            people.setdefault(a["id"], a).pop("block", None)
                            people.setdefault(b["id"], b).pop("block", None)
    result.groups = len(pairs)
    result.contacts = len({i for pair in pairs for i in pair})
    for a_id, b_id in sorted(pairs)[:samples]:
        if a_id in people and b_id in people:
            result.samples.append([people[a_id], people[b_id]])
    return result


def quality_report(
    *, engine: Engine, stale_days: int, now: datetime | None = None, samples: int = 5
) -> QualityReport:
    now = now or utcnow()
    cutoff = now - timedelta(days=stale_days)
    with engine.connect() as conn:
        counts = conn.execute(
            select(func.count(), *[func.count(contacts_t.c[f]) for f in CONTACT_FIELDS])
        ).one()
        total = int(counts[0])
        stale = conn.scalar(
            select(func.count()).select_from(contacts_t).where(contacts_t.c.updated_at < cutoff)
        )
        freshness = {
            "contacts_updated": conn.scalar(select(func.max(Contact.updated_at))),
            "last_event": conn.scalar(select(func.max(Event.occurred_at))),
            "last_order": conn.scalar(select(func.max(Order.placed_at))),
        }
        totals = {
            "events": int(conn.scalar(select(func.count()).select_from(Event)) or 0),
            "orders": int(conn.scalar(select(func.count()).select_from(Order)) or 0),
        }
    return QualityReport(
        generated_at=now,
        stale_days=stale_days,
        contacts=total,
        completeness=[
            Completeness(f, int(n), total) for f, n in zip(CONTACT_FIELDS, counts[1:], strict=True)
        ],
        attributes=[Completeness(k, n, total) for k, n in _attribute_counts(engine)],
        stale_contacts=int(stale or 0),
        freshness={k: _aware(v) for k, v in freshness.items()},
        totals=totals,
        duplicates={
            "same_email": _exact_duplicates(engine, "email", samples),
            "same_phone": _exact_duplicates(engine, "phone", samples),
            "similar_name_and_phone": _similar_people(engine, samples),
        },
    )


def _aware(value: Any) -> datetime | None:
    """``max()`` over a UTCDateTime column comes back raw on SQLite; give it its zone."""
    if value is None:
        return None
    from tidings.crm.types import UTCDateTime

    return UTCDateTime().process_result_value(value, None)  # type: ignore[arg-type]

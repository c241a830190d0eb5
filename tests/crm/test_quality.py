"""The data quality report: completeness, staleness, freshness, likely duplicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from tidings.crm.models import Contact, Event
from tidings.crm.quality import quality_report

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _people(engine: Engine) -> None:
    old = NOW - timedelta(days=400)
    rows = [
        # ext, email, phone, first, last, attributes, updated_at
        ("A", "ann@example.com", "+14155552671", "Ann", "Lee", {"plan": "pro"}, NOW),
        ("B", "ann@example.com", None, "Annie", "Lee", {"plan": "free", "vip": True}, NOW),
        ("C", "carl@example.com", "+14155550100", "Carl", "Jung", {}, old),
        ("D", "dora@example.com", "+14155550100", "Dora", "Maar", {}, NOW),
        ("E", "erik@example.com", "+4930123456780", "Erik", "Müller", {}, NOW),
        ("F", "erik.m@example.com", "+4930123456781", "Eric", "Muller", {}, old),
        ("G", "gus@example.com", "+4930123456789", "Gustav", "Klimt", {}, NOW),
        ("H", None, "+4930123456788", "Hans", "Arp", {}, NOW),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(Contact),
            [
                dict(
                    external_id=e,
                    email=m,
                    phone=p,
                    first_name=f,
                    last_name=la,
                    attributes=a,
                    updated_at=u,
                    created_at=u,
                )
                for e, m, p, f, la, a, u in rows
            ],
        )
        conn.execute(
            insert(Event),
            [
                dict(
                    contact_id=1,
                    name="x",
                    occurred_at=NOW - timedelta(days=2),
                    source="t",
                    idempotency_key="k1",
                    properties={},
                ),
                dict(
                    contact_id=2,
                    name="x",
                    occurred_at=NOW - timedelta(days=1),
                    source="t",
                    idempotency_key="k2",
                    properties={},
                ),
            ],
        )


def test_quality_report(store: Engine) -> None:
    _people(store)
    report = quality_report(engine=store, stale_days=365, now=NOW)
    assert report.contacts == 8
    filled = {c.field: (c.filled, c.percent) for c in report.completeness}
    assert filled["email"] == (7, 87.5)
    assert filled["phone"] == (7, 87.5)
    assert filled["external_id"] == (8, 100.0)
    assert {(c.field, c.filled) for c in report.attributes} == {("plan", 2), ("vip", 1)}
    assert report.stale_contacts == 2
    assert report.freshness["last_event"] == NOW - timedelta(days=1)
    assert report.freshness["last_order"] is None
    assert report.totals == {"events": 2, "orders": 0}

    same_email = report.duplicates["same_email"]
    assert (same_email.groups, same_email.contacts) == (1, 2)
    assert [c["external_id"] for c in same_email.samples[0]] == ["A", "B"]
    same_phone = report.duplicates["same_phone"]
    assert [c["external_id"] for c in same_phone.samples[0]] == ["C", "D"]
    similar = report.duplicates["similar_name_and_phone"]
    # Erik Müller / Eric Muller, phones one digit apart; Gustav/Hans are one digit apart but
    # not the same name, and C/D share a phone exactly (reported above, not here).
    assert similar.groups == 1
    assert [c["external_id"] for c in similar.samples[0]] == ["E", "F"]

    data = report.to_dict()
    assert data["staleness"] == {"stale_days": 365, "stale_contacts": 2}
    assert data["duplicates"]["same_email"]["groups"] == 1

"""Features as of a cut-off: hand-checked values, and nothing after the cut-off leaks in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd  # type: ignore[import-untyped]
from sqlalchemy import Engine, insert, select

from tests.segments.ml import synthetic
from tidings.crm.models import Contact, Event, Order
from tidings.segments.ml.features import FEATURES, build_features

CUT = datetime(2026, 3, 31, 23, 59, tzinfo=UTC)


def _contact(engine: Engine, external_id: str, created: datetime) -> int:
    with engine.begin() as conn:
        conn.execute(
            insert(Contact),
            [{"external_id": external_id, "created_at": created, "updated_at": created}],
        )
        return int(
            conn.execute(select(Contact.id).where(Contact.external_id == external_id)).scalar_one()
        )


def _order(
    engine: Engine,
    contact_id: int,
    order_id: str,
    when: datetime,
    total: str,
    status: str = "completed",
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Order),
            [
                {
                    "order_id": order_id,
                    "contact_id": contact_id,
                    "total": Decimal(total),
                    "currency": "USD",
                    "status": status,
                    "placed_at": when,
                }
            ],
        )


def test_values_same_day_orders_count_once(store: Engine) -> None:
    ann = _contact(store, "ann", CUT - timedelta(days=400))
    day = datetime(2026, 1, 10, 9, tzinfo=UTC)
    _order(store, ann, "a1", day, "10.00")
    _order(store, ann, "a2", day + timedelta(hours=5), "30.00")  # same day: one purchase day
    _order(store, ann, "a3", datetime(2026, 3, 21, 12, tzinfo=UTC), "60.00")
    _order(store, ann, "a4", datetime(2026, 3, 25, tzinfo=UTC), "99.00", status="cancelled")
    features = build_features(store, cutoff=CUT)
    assert list(features.columns) == list(FEATURES)
    row = features.loc[ann]
    assert row["frequency"] == 2
    assert row["monetary_total"] == 100.0 and row["monetary_avg"] == 50.0
    assert row["recency_days"] == 10 and row["tenure_days"] == 80
    assert row["days_30"] == 1 and row["days_90"] == 2
    assert row["repeat_rate"] == 1 * 30 / 80


def test_orders_and_events_after_the_cutoff_change_nothing(store: Engine) -> None:
    synthetic.build(store, per_kind=6, until=CUT - timedelta(days=120))
    before = build_features(store, cutoff=CUT)
    assert before["frequency"].sum() > 0 and before["events_90"].sum() > 0
    ids = list(before.index)
    later = CUT + timedelta(seconds=1)
    with store.begin() as conn:
        conn.execute(
            insert(Order),
            [
                {
                    "order_id": f"late{i}",
                    "contact_id": cid,
                    "total": Decimal("500.00"),
                    "currency": "USD",
                    "status": "completed",
                    "placed_at": later + timedelta(days=i),
                }
                for i, cid in enumerate(ids)
            ],
        )
        conn.execute(
            insert(Event),
            [
                {
                    "contact_id": cid,
                    "name": "product.viewed",
                    "occurred_at": later,
                    "source": "test",
                    "idempotency_key": f"late{cid}",
                }
                for cid in ids
            ],
        )
    _contact(store, "newcomer", CUT + timedelta(days=3))  # created after the cut-off
    after = build_features(store, cutoff=CUT)
    pd.testing.assert_frame_equal(before, after)
    # ...while a cut-off after them does see the new data.
    assert (
        build_features(store, cutoff=later + timedelta(days=90))["frequency"].sum()
        > before["frequency"].sum()
    )

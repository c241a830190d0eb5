"""Per-contact features from orders and events as of a cut-off date, with no data after it.

Orders are read with ONE SQL query (``placed_at <= cutoff``, cancelled/refunded/failed orders
left out) and aggregated with pandas. Several orders on the same UTC day are one *purchase day*
(one transaction in the BG/NBD sense): a basket split into three order ids is not three visits.
Events add one more grouped query (counts in the last 30 and 90 days before the cut-off).

Contacts included: those created at or before the cut-off, plus any contact with an order at or
before it (imported histories have a recent ``created_at`` but old orders). Nothing with a time
after the cut-off is read, so adding later orders or events cannot change the result (a test
proves it).

>>> from datetime import UTC, datetime
>>> frame = build_features(engine, cutoff=datetime(2026, 1, 1, tzinfo=UTC))  # doctest: +SKIP
>>> frame.loc[42, ["frequency", "recency_days", "monetary_avg"]]             # doctest: +SKIP
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from sqlalchemy import Engine, case, func, or_, select

from tidings.crm.models import Contact, Event, Order
from tidings.segments.core import EXCLUDED_ORDER_STATUSES

#: Model inputs, in this order. NaN where undefined (no orders yet): the models handle it.
FEATURES: tuple[str, ...] = (
    "frequency",  # purchase days up to the cut-off
    "recency_days",  # days from the last purchase day to the cut-off
    "tenure_days",  # days from the first purchase day to the cut-off
    "repeat_rate",  # repeat purchase days per 30 days since the first one (BG/NBD's x / t_x)
    "active_share",  # share of the tenure up to the last purchase day (BG/NBD's t_x / T)
    "monetary_total",
    "monetary_avg",  # spend per purchase day
    "days_30",  # purchase days in the last 30 / 90 / 365 days
    "days_90",
    "days_365",
    "spend_90",
    "events_30",  # events of any name in the last 30 / 90 days
    "events_90",
)

_orders = Order.__table__
_contacts = Contact.__table__
_events = Event.__table__


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive cut-off {moment!r}: give it a tzinfo (UTC if unsure)")
    return moment.astimezone(UTC)


def _days(series: pd.Series) -> pd.Series:
    """Timestamps as whole UTC days since the epoch (int64)."""
    stamps = pd.to_datetime(series, utc=True)
    return (stamps.dt.tz_localize(None).astype("datetime64[s]").astype("int64") // 86400).astype(
        "int64"
    )


def purchase_days(
    engine: Engine, *, until: datetime, since: datetime | None = None
) -> pd.DataFrame:
    """Purchase days ``(contact_id, day, revenue)`` with ``since < placed_at <= until``.

    ``day`` counts whole UTC days since 1970-01-01; orders of one contact on one day are summed.
    """
    until = _aware(until)
    o = _orders.c
    stmt = select(o.contact_id, o.placed_at, o.total).where(
        o.placed_at <= until, o.status.not_in(EXCLUDED_ORDER_STATUSES)
    )
    if since is not None:
        stmt = stmt.where(o.placed_at > _aware(since))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    raw = pd.DataFrame(rows, columns=["contact_id", "placed_at", "total"])
    if raw.empty:
        return pd.DataFrame(
            {
                "contact_id": pd.Series(dtype="int64"),
                "day": pd.Series(dtype="int64"),
                "revenue": pd.Series(dtype="float64"),
            }
        )
    raw["day"] = _days(raw["placed_at"])
    raw["revenue"] = raw["total"].astype("float64")
    grouped = raw.groupby(["contact_id", "day"], as_index=False, sort=True)["revenue"].sum()
    return grouped.astype({"contact_id": "int64", "day": "int64"})


def _contact_ids(engine: Engine, cutoff: datetime) -> pd.Index:
    c, o = _contacts.c, _orders.c
    has_order = select(o.contact_id).where(o.placed_at <= cutoff).distinct().scalar_subquery()
    stmt = select(c.id).where(or_(c.created_at <= cutoff, c.id.in_(has_order))).order_by(c.id)
    with engine.connect() as conn:
        ids = conn.execute(stmt).scalars().all()
    return pd.Index(np.asarray(ids, dtype="int64"), name="contact_id")


def _event_counts(engine: Engine, cutoff: datetime) -> pd.DataFrame:
    e = _events.c
    start = cutoff - timedelta(days=90)
    recent = e.occurred_at > cutoff - timedelta(days=30)
    stmt = (
        select(
            e.contact_id,
            func.count().label("events_90"),
            func.sum(case((recent, 1), else_=0)).label("events_30"),
        )
        .where(e.occurred_at > start, e.occurred_at <= cutoff)
        .group_by(e.contact_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(rows, columns=["contact_id", "events_90", "events_30"])
    return frame.astype("int64").set_index("contact_id")


def features_from_days(days: pd.DataFrame, *, cutoff: datetime, ids: pd.Index) -> pd.DataFrame:
    """The order features of ``ids`` from purchase days (already limited to the cut-off)."""
    cut = int(_days(pd.Series([_aware(cutoff)])).iloc[0])
    frame = pd.DataFrame(index=ids)
    if not days.empty:
        days = days[days["day"] <= cut]
        g = days.groupby("contact_id")
        age = cut - days["day"]
        frame["frequency"] = g.size()
        frame["recency_days"] = cut - g["day"].max()
        frame["tenure_days"] = cut - g["day"].min()
        frame["monetary_total"] = g["revenue"].sum()
        for window in (30, 90, 365):
            frame[f"days_{window}"] = (age < window).groupby(days["contact_id"]).sum()
        frame["spend_90"] = days["revenue"].where(age < 90, 0.0).groupby(days["contact_id"]).sum()
    for name in ("frequency", "days_30", "days_90", "days_365"):
        frame[name] = frame.get(name, pd.Series(dtype="float64")).reindex(ids).fillna(0)
    for name in ("monetary_total", "spend_90"):
        frame[name] = frame.get(name, pd.Series(dtype="float64")).reindex(ids).fillna(0.0)
    for name in ("recency_days", "tenure_days"):
        frame[name] = frame.get(name, pd.Series(dtype="float64")).reindex(ids)
    frequency = frame["frequency"].astype("float64")
    frame["monetary_avg"] = (frame["monetary_total"] / frequency).where(frequency > 0)
    span = frame["tenure_days"].clip(lower=1.0)
    frame["repeat_rate"] = ((frequency - 1).clip(lower=0) * 30.0 / span).where(frequency > 0)
    frame["active_share"] = ((frame["tenure_days"] - frame["recency_days"]) / span).where(
        frequency > 0
    )
    return frame.astype("float64")


def build_features(engine: Engine, *, cutoff: datetime, events: bool = True) -> pd.DataFrame:
    """One row per contact known at ``cutoff``, columns :data:`FEATURES` (float64)."""
    cutoff = _aware(cutoff)
    ids = _contact_ids(engine, cutoff)
    frame = features_from_days(purchase_days(engine, until=cutoff), cutoff=cutoff, ids=ids)
    counts = _event_counts(engine, cutoff) if events else pd.DataFrame()
    for name in ("events_30", "events_90"):
        column = counts[name] if name in counts else pd.Series(dtype="float64")
        frame[name] = column.reindex(ids).fillna(0).astype("float64")
    return frame[list(FEATURES)]


def labels_after(
    days: pd.DataFrame, *, cutoff: datetime, horizon_days: int, ids: pd.Index
) -> pd.DataFrame:
    """Targets in ``(cutoff, cutoff + horizon]``: purchase days, revenue, and "no purchase"."""
    cut = int(_days(pd.Series([_aware(cutoff)])).iloc[0])
    window = days[(days["day"] > cut) & (days["day"] <= cut + horizon_days)]
    g = window.groupby("contact_id")
    out = pd.DataFrame(index=ids)
    out["orders"] = g.size().reindex(ids).fillna(0).astype("float64")
    out["revenue"] = g["revenue"].sum().reindex(ids).fillna(0.0).astype("float64")
    out["churned"] = (out["orders"] == 0).astype("int64")
    return out

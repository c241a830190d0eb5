"""Write scores onto contacts, set-based: ``churn_risk``, ``clv_90d``, ``rfm_segment``, version.

Features of every contact are computed as of ``as_of`` (default now), the models of one version
score them in one vectorised call, and the results go back in batches:

* PostgreSQL: the batch is COPYed into a temporary table and applied with ONE
  ``UPDATE contacts ... FROM scores WHERE contacts.id = scores.id``;
* SQLite: one ``executemany`` UPDATE by primary key per batch.

After scoring, segment rules can use them: ``score: {churn_risk: {gte: 0.7}}``,
``score: {rfm_segment: {in: [at_risk, hibernating]}}``.

>>> models = load(settings.models_dir)                         # doctest: +SKIP
>>> report = score_contacts(engine, models=models)             # doctest: +SKIP
>>> report.scored, report.segments["champions"]                # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
from sqlalchemy import Connection, Engine, Table, bindparam, text, update

from tidings.crm.models import Contact
from tidings.segments.ml.features import build_features
from tidings.segments.ml.models import ScoreModels

_contacts: Table = Contact.__table__  # type: ignore[assignment]


@dataclass
class ScoreReport:
    version: str
    as_of: datetime
    scored: int
    seconds: float
    segments: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "as_of": self.as_of.isoformat(),
            "scored": self.scored,
            "seconds": round(self.seconds, 3),
            "segments": self.segments,
        }


def score_frame(
    engine: Engine, *, models: ScoreModels, as_of: datetime | None = None
) -> pd.DataFrame:
    """Predictions for every contact as of ``as_of`` (no writes)."""
    as_of = as_of or datetime.now(UTC)
    features = build_features(engine, cutoff=as_of, events=models.params.events)
    return models.predict(features)


def _rows(scores: pd.DataFrame, version: str, scored_at: datetime) -> list[dict[str, Any]]:
    return [
        {
            "_id": int(contact_id),
            "churn_risk": round(float(risk), 6),
            "clv_90d": Decimal(f"{max(float(revenue), 0.0):.2f}"),
            "rfm_segment": str(segment),
            "scores_model_version": version,
            "scored_at": scored_at,
        }
        for contact_id, risk, revenue, segment in zip(
            scores.index,
            scores["churn_risk"],
            scores["expected_revenue"],
            scores["rfm_segment"],
            strict=True,
        )
    ]


def _write_sqlite(conn: Connection, rows: list[dict[str, Any]]) -> None:
    c = _contacts.c
    stmt = (
        update(_contacts)
        .where(c.id == bindparam("_id"))
        .values(
            churn_risk=bindparam("churn_risk"),
            clv_90d=bindparam("clv_90d"),
            rfm_segment=bindparam("rfm_segment"),
            scores_model_version=bindparam("scores_model_version"),
            scored_at=bindparam("scored_at"),
        )
    )
    conn.execute(stmt, rows)


def _write_postgres(conn: Connection, rows: list[dict[str, Any]]) -> None:
    conn.execute(
        text(
            "CREATE TEMP TABLE IF NOT EXISTS tidings_scores (id bigint PRIMARY KEY, "
            "churn_risk double precision, clv_90d numeric(14,2), rfm_segment varchar(32), "
            "scores_model_version varchar(64), scored_at timestamptz) ON COMMIT DELETE ROWS"
        )
    )
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cursor:
        columns = "id, churn_risk, clv_90d, rfm_segment, scores_model_version, scored_at"
        with cursor.copy(f"COPY tidings_scores ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    (
                        row["_id"],
                        row["churn_risk"],
                        row["clv_90d"],
                        row["rfm_segment"],
                        row["scores_model_version"],
                        row["scored_at"],
                    )
                )
    conn.execute(
        text(
            "UPDATE contacts SET churn_risk = s.churn_risk, clv_90d = s.clv_90d, "
            "rfm_segment = s.rfm_segment, scores_model_version = s.scores_model_version, "
            "scored_at = s.scored_at FROM tidings_scores s WHERE contacts.id = s.id"
        )
    )


def write_scores(
    engine: Engine,
    scores: pd.DataFrame,
    *,
    version: str,
    scored_at: datetime | None = None,
    batch_size: int = 20_000,
) -> int:
    """Store ``scores`` (from :meth:`ScoreModels.predict`) on contacts; returns rows written."""
    scored_at = scored_at or datetime.now(UTC)
    rows = _rows(scores, version, scored_at)
    write = _write_postgres if engine.dialect.name == "postgresql" else _write_sqlite
    for start in range(0, len(rows), batch_size):
        with engine.begin() as conn:
            write(conn, rows[start : start + batch_size])
    return len(rows)


def score_contacts(
    engine: Engine,
    *,
    models: ScoreModels,
    as_of: datetime | None = None,
    batch_size: int = 20_000,
) -> ScoreReport:
    """Score every contact with ``models`` as of ``as_of`` (default now) and store the scores."""
    started = time.perf_counter()
    as_of = as_of or datetime.now(UTC)
    scores = score_frame(engine, models=models, as_of=as_of)
    written = write_scores(
        engine, scores, version=models.version, scored_at=datetime.now(UTC), batch_size=batch_size
    )
    counts = scores["rfm_segment"].value_counts()
    return ScoreReport(
        version=models.version,
        as_of=as_of,
        scored=written,
        seconds=time.perf_counter() - started,
        segments={str(k): int(v) for k, v in counts.items()},
    )

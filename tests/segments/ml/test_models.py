"""RFM naming, churn/CLV on a store where the truth is known, scoring on both databases, CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from tests.segments.ml import synthetic
from tidings.config import get_settings
from tidings.crm.db import make_engine, session_scope, upgrade
from tidings.crm.models import Contact
from tidings.errors import InputError
from tidings.segments.membership import count
from tidings.segments.ml import models as ml
from tidings.segments.ml.features import FEATURES, build_features
from tidings.segments.ml.rfm import NO_ORDERS, fit_rfm, name_clusters
from tidings.segments.ml.scoring import score_contacts
from tidings.segments.rules import Segment

FAST = ml.TrainParams(horizon_days=90, snapshots=2, max_iter=60, learning_rate=0.1)


def _rfm_frame(rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, slice]]:
    """Four obvious groups (recency days, purchase days, spend per day) and some non-buyers."""
    groups = {
        "champions": (5, 30, 200),
        "at_risk": (300, 25, 150),
        "new": (6, 1, 40),
        "hibernating": (400, 1, 30),
    }
    rows, where, start = [], {}, 0
    for name, (recency, frequency, avg) in groups.items():
        for _ in range(50):
            rows.append(
                {
                    "recency_days": recency * rng.uniform(0.8, 1.2),
                    "frequency": max(1, round(frequency * rng.uniform(0.8, 1.2))),
                    "monetary_avg": avg * rng.uniform(0.8, 1.2),
                }
            )
        where[name] = slice(start, start + 50)
        start += 50
    rows += [{"recency_days": np.nan, "frequency": 0, "monetary_avg": np.nan}] * 5
    frame = pd.DataFrame(rows)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="contact_id")
    return frame, where


def test_rfm_names_obvious_groups_deterministically() -> None:
    frame, where = _rfm_frame(np.random.default_rng(3))
    model = fit_rfm(frame)
    assert model.k == 4, model.silhouettes  # silhouette picks the four real groups
    names = model.assign(frame)
    for expected, rows in where.items():
        assert set(names.iloc[rows]) == {expected}
    assert set(names.iloc[-5:]) == {NO_ORDERS}
    again = fit_rfm(frame).assign(frame)
    assert names.equals(again)


def test_cluster_names_are_unique_per_quadrant() -> None:
    centers = np.array([[1.0, 1.0, 1.0], [0.5, 0.6, 0.1], [-1.0, -1.0, 0.0], [-2.0, -1.0, 0.0]])
    assert name_clusters(centers) == ["champions", "loyal", "hibernating", "lost"]


def _trained(engine: Engine) -> ml.ScoreModels:
    synthetic.build(engine, per_kind=40)
    return ml.train(engine, as_of=synthetic.AS_OF, params=FAST)


def test_churn_and_clv_recover_the_truth(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    models = _trained(engine)
    auc, mae, naive = (models.metrics[k] for k in ("churn_auc", "orders_mae", "naive_orders_mae"))
    assert auc is not None and mae is not None and naive is not None
    assert auc > 0.9 and mae < naive + 0.5
    features = build_features(engine, cutoff=synthetic.AS_OF)
    with engine.connect() as conn:
        kinds = {
            cid: attrs["kind"]
            for cid, attrs in conn.execute(select(Contact.id, Contact.attributes))
        }
    predicted = models.predict(features)
    predicted["kind"] = predicted.index.map(kinds)
    by_kind = predicted.groupby("kind")[["churn_risk", "expected_orders"]].mean()
    assert by_kind.loc["steady", "churn_risk"] < 0.2 < 0.8 < by_kind.loc["lapsed", "churn_risk"]
    # Steady buyers order every 7-12 days: about 9 purchase days in 90 days.
    assert 5 < by_kind.loc["steady", "expected_orders"] < 13
    assert by_kind.loc["lapsed", "expected_orders"] < 0.5
    # AUC of "buys in the next 90 days" (truth from the synthetic store) well above 0.5.
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    buys = predicted["kind"].eq("steady").astype(int)
    assert roc_auc_score(buys, -predicted["churn_risk"]) > 0.9
    assert set(predicted["rfm_segment"]) <= {*models.rfm.names, NO_ORDERS}
    assert ml.model_version(FAST, models.as_of) == models.version
    engine.dispose()


def test_too_little_history_is_a_clear_error(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    with pytest.raises(InputError, match="no orders in the store"):
        ml.train(engine, as_of=synthetic.AS_OF)
    synthetic.build(engine, per_kind=5)
    # Orders from 365 days before AS_OF: as of AS_OF-300, the training rows (90 days earlier)
    # have no purchase yet.
    with pytest.raises(InputError, match="not enough history: no purchases up to"):
        ml.train(engine, as_of=synthetic.AS_OF - timedelta(days=300))
    with pytest.raises(InputError, match="no trained models") as info:
        ml.load(Path(sqlite_url.removeprefix("sqlite:///")).parent / "nowhere")
    assert "tidings models train" in str(info.value.hint)
    engine.dispose()


def test_scores_are_written_and_usable_in_rules(store: Engine, tmp_path: Path) -> None:
    models = _trained(store)
    path = ml.save(models, tmp_path)
    loaded = ml.load(tmp_path)
    assert loaded.version == models.version and path.exists()
    report = score_contacts(store, models=loaded, as_of=synthetic.AS_OF)
    assert report.scored == 4 * 40
    with store.connect() as conn:
        rows = conn.execute(
            select(
                Contact.attributes,
                Contact.churn_risk,
                Contact.clv_90d,
                Contact.rfm_segment,
                Contact.scores_model_version,
                Contact.scored_at,
            )
        ).all()
    assert all(r.scores_model_version == models.version for r in rows)
    assert all(0 <= r.churn_risk <= 1 and r.clv_90d >= 0 and r.scored_at for r in rows)
    prospects = {r.rfm_segment for r in rows if r.attributes["kind"] == "prospect"}
    assert prospects == {NO_ORDERS}
    steady_clv = np.mean([float(r.clv_90d) for r in rows if r.attributes["kind"] == "steady"])
    assert steady_clv > 300  # ~9 orders of 40-120 in 90 days
    risky = Segment.model_validate(
        {"name": "risky", "rule": {"score": {"churn_risk": {"gte": 0.5}}}}
    )
    with session_scope(store) as session:
        n = count(risky, session=session)
    assert n == sum(1 for r in rows if r.churn_risk >= 0.5)
    assert 40 <= n <= 3 * 40  # not the steady buyers


@pytest.fixture
def cli_env(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    synthetic.build(engine, per_kind=15)
    engine.dispose()
    monkeypatch.setenv("TIDINGS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TIDINGS_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    yield sqlite_url
    get_settings.cache_clear()


def test_cli_train_then_score(cli_env: str) -> None:
    from tidings.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "train", "--as-of", "2026-06-30", "--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.output)
    assert Path(trained["path"]).exists() and trained["metrics"]["rfm_k"] >= 3
    result = runner.invoke(app, ["models", "score", "--as-of", "2026-06-30", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["version"] == trained["version"] and report["scored"] == 60
    result = runner.invoke(app, ["models", "score", "--version", "nope"])
    assert result.exit_code != 0
    result = runner.invoke(app, ["models", "train", "--as-of", "yesterday"])
    assert result.exit_code != 0


def test_flow_tasks_run_without_a_prefect_server(cli_env: str) -> None:
    from tidings.flows.scores import features_task, score_task, train_task

    summary = features_task.fn("2026-06-30")
    assert summary == {"contacts": 60, "buyers": 45}
    version = train_task.fn("2026-06-30", 90, 2)
    report = score_task.fn(version, "2026-06-30")
    assert report["scored"] == 60 and report["version"] == version
    assert set(FEATURES) >= {"frequency", "recency_days"}
    assert datetime.fromisoformat(report["as_of"]) - datetime(2026, 6, 30, tzinfo=UTC) < timedelta(
        days=1
    )

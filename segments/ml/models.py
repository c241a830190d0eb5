"""Churn propensity and CLV (scikit-learn), trained with a time split, versioned and persisted.

For a data cut-off ``T`` and horizon ``N`` days:

* **training rows** are contacts' features as of ``T-N`` (and, with ``snapshots > 1``, also as of
  ``T-N-step``, ``T-N-2*step`` ...), labelled by what they did in the ``N`` days after each
  snapshot, so every label ends at or before ``T``;
* **evaluation** repeats that one horizon earlier (train on snapshots ending at ``T-N``, test on
  features as of ``T-N`` with labels from ``(T-N, T]``, the period after the training labels):
  the metrics stored with the model are out-of-time, not in-sample;
* **models** (``HistGradientBoosting``): a classifier for churn = P(no purchase day in the next N
  days); Poisson regressors for the expected number of purchase days and the expected revenue in
  the next N days (CLV). RFM clusters come from :mod:`segments.ml.rfm` on the features as of T.

The model version is a hash of the training parameters and the data cut-off, so training twice
on the same data gives the same version. Models are saved with joblib under ``models_dir``
(``TIDINGS_MODELS_DIR``), with ``latest`` naming the newest.

>>> trained = train(engine, as_of=datetime(2026, 11, 1, tzinfo=UTC))   # doctest: +SKIP
>>> path = save(trained, "models"); load("models").version == trained.version  # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from sqlalchemy import Engine
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from segments.ml.features import (
    FEATURES,
    _contact_ids,
    _event_counts,
    features_from_days,
    labels_after,
    purchase_days,
)
from segments.ml.rfm import RfmModel, fit_rfm
from tidings.errors import InputError

LATEST = "latest"


@dataclass(frozen=True)
class TrainParams:
    """What a training run depends on (with the cut-off, it makes the model version)."""

    horizon_days: int = 90
    snapshots: int = 3
    step_days: int | None = None  # between snapshots; default: the horizon
    seed: int = 0
    k_min: int = 3
    k_max: int = 8
    events: bool = True
    max_iter: int = 200
    learning_rate: float = 0.05
    min_samples_leaf: int = 100  # purchase counts are noisy: small, regularised trees
    max_leaf_nodes: int = 15
    l2_regularization: float = 1.0


@dataclass
class ScoreModels:
    """The trained models of one version, ready to score a feature frame."""

    version: str
    as_of: datetime
    params: TrainParams
    churn: Any
    orders: Any
    revenue: Any
    rfm: RfmModel
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    trained_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def predict(self, features: pd.DataFrame, *, horizon_days: int | None = None) -> pd.DataFrame:
        """``churn_risk``, ``expected_orders``, ``expected_revenue``, ``rfm_segment`` per row.

        Counts and revenue are for the trained horizon; another ``horizon_days`` scales them
        by ``horizon_days / trained horizon`` (a constant rate beyond the horizon).
        """
        x = features[list(FEATURES)].to_numpy(dtype=np.float64)
        scale = (horizon_days or self.params.horizon_days) / self.params.horizon_days
        out = pd.DataFrame(index=features.index)
        if len(x):
            out["churn_risk"] = _churn_probability(self.churn, x)
            out["expected_orders"] = np.clip(self.orders.predict(x), 0, None) * scale
            out["expected_revenue"] = np.clip(self.revenue.predict(x), 0, None) * scale
        else:
            for name in ("churn_risk", "expected_orders", "expected_revenue"):
                out[name] = pd.Series(dtype="float64")
        out["rfm_segment"] = self.rfm.assign(features)
        return out


def _churn_probability(model: Any, x: np.ndarray) -> np.ndarray:
    classes = list(model.classes_)
    if 1 not in classes:  # nobody churned in training: risk 0
        return np.zeros(len(x))
    return np.asarray(model.predict_proba(x)[:, classes.index(1)], dtype=np.float64)


def model_version(params: TrainParams, as_of: datetime) -> str:
    """A stable 16-hex-digit hash of the training parameters and the data cut-off."""
    payload = json.dumps(
        {"params": asdict(params), "as_of": as_of.astimezone(UTC).isoformat()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def end_of_day(moment: datetime) -> datetime:
    """The last microsecond of ``moment``'s UTC day (cut-offs fall on day boundaries)."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1, microseconds=-1)


def snapshot(engine: Engine, days: pd.DataFrame, *, cutoff: datetime, events: bool) -> pd.DataFrame:
    """Features as of ``cutoff`` from already loaded purchase days (+ events from the store)."""
    ids = _contact_ids(engine, cutoff)
    frame = features_from_days(days, cutoff=cutoff, ids=ids)
    counts = _event_counts(engine, cutoff) if events else pd.DataFrame()
    for name in ("events_30", "events_90"):
        column = counts[name] if name in counts else pd.Series(dtype="float64")
        frame[name] = column.reindex(ids).fillna(0).astype("float64")
    return frame[list(FEATURES)]


def training_rows(
    engine: Engine, days: pd.DataFrame, *, last_cutoff: datetime, params: TrainParams
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stacked (features, labels) for snapshots ending at ``last_cutoff`` and going back."""
    step = timedelta(days=params.step_days or params.horizon_days)
    xs, ys = [], []
    for i in range(params.snapshots):
        cutoff = last_cutoff - i * step
        x = snapshot(engine, days, cutoff=cutoff, events=params.events)
        if x.empty:
            break
        xs.append(x)
        ys.append(labels_after(days, cutoff=cutoff, horizon_days=params.horizon_days, ids=x.index))
    if not xs:
        return pd.DataFrame(columns=list(FEATURES)), pd.DataFrame(
            columns=["orders", "revenue", "churned"]
        )
    return pd.concat(xs), pd.concat(ys)


def _fit(x: pd.DataFrame, y: pd.DataFrame, params: TrainParams) -> tuple[Any, Any, Any]:
    from sklearn.dummy import DummyClassifier  # type: ignore[import-untyped]
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor  # type: ignore[import-untyped]

    common: dict[str, Any] = {
        "max_iter": params.max_iter,
        "learning_rate": params.learning_rate,
        "random_state": params.seed,
        "early_stopping": False,
        "min_samples_leaf": params.min_samples_leaf,
        "max_leaf_nodes": params.max_leaf_nodes,
        "l2_regularization": params.l2_regularization,
    }
    data = x.to_numpy(dtype=np.float64)
    churned = y["churned"].to_numpy()
    churn: Any
    # One thread: OpenMP spin-waiting made fits 3-10x slower on a busy 2-core machine.
    with threadpool_limits(1):
        if len(np.unique(churned)) < 2:
            churn = DummyClassifier(strategy="prior").fit(data, churned)
        else:
            churn = HistGradientBoostingClassifier(**common).fit(data, churned)
        orders = HistGradientBoostingRegressor(loss="poisson", **common).fit(
            data, y["orders"].to_numpy()
        )
        revenue = HistGradientBoostingRegressor(loss="poisson", **common).fit(
            data, y["revenue"].to_numpy()
        )
    return churn, orders, revenue


def evaluate(
    engine: Engine, days: pd.DataFrame, *, as_of: datetime, params: TrainParams
) -> dict[str, float | int | None]:
    """Out-of-time metrics: train on labels ending at T-N, test on (T-N, T]."""
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    horizon = timedelta(days=params.horizon_days)
    test_cutoff = as_of - horizon
    x_train, y_train = training_rows(engine, days, last_cutoff=test_cutoff - horizon, params=params)
    x_test = snapshot(engine, days, cutoff=test_cutoff, events=params.events)
    if x_train.empty or x_test.empty or y_train["orders"].sum() == 0:
        return {"rows_train": len(x_train), "rows_test": len(x_test)}
    y_test = labels_after(
        days, cutoff=test_cutoff, horizon_days=params.horizon_days, ids=x_test.index
    )
    churn, orders, revenue = _fit(x_train, y_train, params)
    data = x_test.to_numpy(dtype=np.float64)
    risk = _churn_probability(churn, data)
    expected = np.clip(orders.predict(data), 0, None)
    truth = y_test["orders"].to_numpy()
    # Naive baseline: the same rate of purchase days as in the N days before the cut-off.
    naive = x_test["days_90"].to_numpy() * params.horizon_days / 90.0
    churned = y_test["churned"].to_numpy()
    auc = float(roc_auc_score(churned, risk)) if len(np.unique(churned)) == 2 else None
    return {
        "rows_train": len(x_train),
        "rows_test": len(x_test),
        "churn_auc": auc,
        "orders_mae": float(np.mean(np.abs(expected - truth))),
        "orders_rmse": float(np.sqrt(np.mean((expected - truth) ** 2))),
        "naive_orders_mae": float(np.mean(np.abs(naive - truth))),
        "revenue_mae": float(
            np.mean(np.abs(np.clip(revenue.predict(data), 0, None) - y_test["revenue"]))
        ),
    }


def train(
    engine: Engine, *, as_of: datetime | None = None, params: TrainParams | None = None
) -> ScoreModels:
    """Train churn, CLV and RFM models on data up to ``as_of`` (default: now)."""
    params = params or TrainParams()
    as_of = end_of_day(as_of or datetime.now(UTC))
    days = purchase_days(engine, until=as_of)
    if days.empty:
        raise InputError(
            "no orders in the store up to "
            f"{as_of:%Y-%m-%d}: import orders first (tidings orders import FILE)",
            hint="scores need order history of at least one horizon "
            f"({params.horizon_days} days) before the cut-off",
        )
    last = as_of - timedelta(days=params.horizon_days)
    x, y = training_rows(engine, days, last_cutoff=last, params=params)
    if x.empty or y["orders"].sum() == 0:
        raise InputError(
            f"not enough history: no purchases in the {params.horizon_days} days after "
            f"{last:%Y-%m-%d} to learn from",
            hint="train with a later --as-of or a shorter horizon (TIDINGS_SCORES_HORIZON_DAYS)",
        )
    metrics = evaluate(engine, days, as_of=as_of, params=params)
    churn, orders, revenue = _fit(x, y, params)
    current = snapshot(engine, days, cutoff=as_of, events=params.events)
    rfm = fit_rfm(current, k_range=range(params.k_min, params.k_max + 1), seed=params.seed)
    metrics.update({"rfm_k": rfm.k, "rows_fit": len(x)})
    return ScoreModels(
        version=model_version(params, as_of),
        as_of=as_of,
        params=params,
        churn=churn,
        orders=orders,
        revenue=revenue,
        rfm=rfm,
        metrics=metrics,
    )


def save(models: ScoreModels, models_dir: str | Path) -> Path:
    """Write ``<version>.joblib`` and point ``latest`` at it; returns the model file."""
    import joblib  # type: ignore[import-untyped]

    folder = Path(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{models.version}.joblib"
    joblib.dump(models, path)
    tmp = folder / f".{LATEST}.tmp"
    tmp.write_text(models.version + "\n")
    tmp.replace(folder / LATEST)
    return path


def load(models_dir: str | Path, version: str | None = None) -> ScoreModels:
    """The models of ``version`` (default: the latest trained) from ``models_dir``."""
    import joblib

    folder = Path(models_dir)
    if version is None:
        marker = folder / LATEST
        if not marker.exists():
            raise InputError(
                f"no trained models in {folder}/",
                location=str(marker),
                hint="run `tidings models train` first (or set TIDINGS_MODELS_DIR)",
            )
        version = marker.read_text().strip()
    path = folder / f"{version}.joblib"
    if not path.exists():
        raise InputError(f"model version {version} not found", location=str(path))
    loaded = joblib.load(path)
    if not isinstance(loaded, ScoreModels):
        raise InputError(f"{path} does not hold tidings score models", location=str(path))
    return loaded

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
* **BG/NBD** (:mod:`segments.ml.bgnbd`, with ``bgnbd=True``): fitted on the buyers as of every
  snapshot and as of T; it gives the GBMs two more inputs, extrapolates the N-day predictions to
  other horizons by each customer's own BG/NBD curve, and is blended into the expected purchase
  days. Whether the GBMs take its inputs and the blend weight are chosen on the evaluation split
  above (labels ending at T), by Poisson deviance: see :mod:`segments.ml.blend`.

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

from tidings.errors import InputError
from tidings.segments.ml.bgnbd import BgNbd
from tidings.segments.ml.blend import (
    BGNBD_FEATURES,
    GBM_ONLY,
    Blend,
    bgnbd_columns,
    blended,
    choose_blend,
    expected,
    fit_at,
)
from tidings.segments.ml.features import (
    FEATURES,
    _contact_ids,
    _event_counts,
    features_from_days,
    labels_after,
    purchase_days,
)
from tidings.segments.ml.rfm import RfmModel, fit_rfm

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
    bgnbd: bool = True  # BG/NBD inputs, horizon curve and blend (segments.ml.blend)


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
    # BG/NBD fitted on the buyers as of ``as_of`` (None: off, nobody bought twice, or the fit
    # did not converge) and how it is used. The defaults keep models saved before BG/NBD
    # existed working as they were.
    bgnbd: BgNbd | None = None
    blend: Blend = GBM_ONLY
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    trained_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def predict(self, features: pd.DataFrame, *, horizon_days: int | None = None) -> pd.DataFrame:
        """``churn_risk``, ``expected_orders``, ``expected_revenue``, ``rfm_segment`` per row.

        Counts and revenue are for ``horizon_days`` (default: the trained horizon N). The GBMs
        predict N days; for another horizon h they are scaled by the customer's BG/NBD curve
        ``E[h] / E[N]`` (by ``h / N`` without BG/NBD or for contacts without a purchase), then
        the expected purchase days are blended with BG/NBD's (``self.blend``). ``churn_risk``
        is always for N days.
        """
        trained = self.params.horizon_days
        horizon = horizon_days or trained
        bgnbd = self.bgnbd
        x = model_matrix(features, bgnbd if self.blend.features else None, trained)
        out = pd.DataFrame(index=features.index)
        if len(x):
            scale = np.full(len(x), horizon / trained)
            long = expected(bgnbd, features, horizon)
            if bgnbd is not None:
                short = expected(bgnbd, features, trained)
                curve = np.isfinite(short) & (short > 1e-12)
                scale[curve] = long[curve] / short[curve]
            orders = np.clip(self.orders.predict(x), 0, None) * scale
            out["churn_risk"] = _churn_probability(self.churn, x)
            out["expected_orders"] = blended(orders, long, self.blend.weight)
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


def model_matrix(features: pd.DataFrame, bgnbd: BgNbd | None, horizon_days: int) -> np.ndarray:
    """The GBMs' input matrix: :data:`FEATURES`, plus :data:`BGNBD_FEATURES` given a fit."""
    x = features[list(FEATURES)]
    if bgnbd is not None:
        x = pd.concat([x, bgnbd_columns(features, bgnbd, horizon_days=horizon_days)], axis=1)
    return np.asarray(x.to_numpy(dtype=np.float64), dtype=np.float64)


def snapshot(
    engine: Engine,
    days: pd.DataFrame,
    *,
    cutoff: datetime,
    events: bool,
    bgnbd_horizon: int | None = None,
) -> pd.DataFrame:
    """Features as of ``cutoff`` from already loaded purchase days (+ events from the store).

    With ``bgnbd_horizon``, BG/NBD is fitted on the buyers as of ``cutoff`` and its
    :data:`BGNBD_FEATURES` for that horizon are added (NaN when it cannot be fitted).
    """
    ids = _contact_ids(engine, cutoff)
    frame = features_from_days(days, cutoff=cutoff, ids=ids)
    counts = _event_counts(engine, cutoff) if events else pd.DataFrame()
    for name in ("events_30", "events_90"):
        column = counts[name] if name in counts else pd.Series(dtype="float64")
        frame[name] = column.reindex(ids).fillna(0).astype("float64")
    frame = frame[list(FEATURES)]
    if bgnbd_horizon is None:
        return frame
    model = fit_at(frame) if len(frame) else None
    return pd.concat([frame, bgnbd_columns(frame, model, horizon_days=bgnbd_horizon)], axis=1)


def training_rows(
    engine: Engine, days: pd.DataFrame, *, last_cutoff: datetime, params: TrainParams
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stacked (features, labels) for snapshots ending at ``last_cutoff`` and going back.

    With ``params.bgnbd`` the features include :data:`BGNBD_FEATURES` from a BG/NBD fit as of
    each snapshot's own cut-off.
    """
    step = timedelta(days=params.step_days or params.horizon_days)
    xs, ys = [], []
    for i in range(params.snapshots):
        cutoff = last_cutoff - i * step
        x = snapshot(
            engine, days, cutoff=cutoff, events=params.events, bgnbd_horizon=_bg_horizon(params)
        )
        if x.empty:
            break
        xs.append(x)
        ys.append(labels_after(days, cutoff=cutoff, horizon_days=params.horizon_days, ids=x.index))
    if not xs:
        return pd.DataFrame(columns=_columns(params.bgnbd)), pd.DataFrame(
            columns=["orders", "revenue", "churned"]
        )
    return pd.concat(xs), pd.concat(ys)


def _bg_horizon(params: TrainParams) -> int | None:
    return params.horizon_days if params.bgnbd else None


def _columns(uses_bgnbd: bool) -> list[str]:
    return list(FEATURES) + (list(BGNBD_FEATURES) if uses_bgnbd else [])


def _buyers(x: pd.DataFrame) -> bool:
    """Whether any training row has a purchase (without one, there is nothing to learn)."""
    return bool((x["frequency"] > 0).any())


def _has_bgnbd(x: pd.DataFrame) -> bool:
    """Whether BG/NBD could be fitted at some snapshot of ``x`` (its inputs are not all NaN)."""
    return "bgnbd_orders" in x and bool(x["bgnbd_orders"].notna().any())


def _estimators(params: TrainParams) -> dict[str, Any]:
    return {
        "max_iter": params.max_iter,
        "learning_rate": params.learning_rate,
        "random_state": params.seed,
        "early_stopping": False,
        "min_samples_leaf": params.min_samples_leaf,
        "max_leaf_nodes": params.max_leaf_nodes,
        "l2_regularization": params.l2_regularization,
    }


def _fit_orders(data: np.ndarray, y: pd.DataFrame, params: TrainParams) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor  # type: ignore[import-untyped]

    with threadpool_limits(1):
        return HistGradientBoostingRegressor(loss="poisson", **_estimators(params)).fit(
            data, y["orders"].to_numpy()
        )


def _fit(
    x: pd.DataFrame, y: pd.DataFrame, params: TrainParams, *, uses_bgnbd: bool
) -> tuple[Any, Any]:
    from sklearn.dummy import DummyClassifier  # type: ignore[import-untyped]
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    common = _estimators(params)
    data = x[_columns(uses_bgnbd)].to_numpy(dtype=np.float64)
    churned = y["churned"].to_numpy()
    churn: Any
    # One thread: OpenMP spin-waiting made fits 3-10x slower on a busy 2-core machine.
    with threadpool_limits(1):
        if len(np.unique(churned)) < 2:
            churn = DummyClassifier(strategy="prior").fit(data, churned)
        else:
            churn = HistGradientBoostingClassifier(**common).fit(data, churned)
        revenue = HistGradientBoostingRegressor(loss="poisson", **common).fit(
            data, y["revenue"].to_numpy()
        )
    return churn, revenue


def _predict_orders(model: Any, x: pd.DataFrame, uses_bgnbd: bool) -> np.ndarray:
    data = x[_columns(uses_bgnbd)].to_numpy(dtype=np.float64)
    return np.clip(np.asarray(model.predict(data), dtype=np.float64), 0, None)


#: Without an evaluation of BG/NBD before the cut-off (too little history): the GBM with
#: BG/NBD inputs, not blended (the GBM learns how much to rely on them).
FALLBACK_BLEND = Blend(features=True, weight=0.0)


def evaluate(
    engine: Engine, days: pd.DataFrame, *, as_of: datetime, params: TrainParams
) -> tuple[dict[str, float | int | None], Blend | None]:
    """Out-of-time metrics: train on labels ending at T-N, test on (T-N, T]; and the blend.

    With ``params.bgnbd``, the blend (:func:`segments.ml.blend.choose_blend`) is chosen on
    this same split, so only data up to T is used; the metrics are those of the chosen blend,
    with the plain GBM's and BG/NBD's alone beside them. The blend is None when the split has
    no data, or BG/NBD could not be fitted in it (then the metrics are the plain GBM's).
    """
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    horizon = timedelta(days=params.horizon_days)
    test_cutoff = as_of - horizon
    x_train, y_train = training_rows(engine, days, last_cutoff=test_cutoff - horizon, params=params)
    x_test = snapshot(
        engine, days, cutoff=test_cutoff, events=params.events, bgnbd_horizon=_bg_horizon(params)
    )
    if x_train.empty or x_test.empty or y_train["orders"].sum() == 0 or not _buyers(x_train):
        return {"rows_train": len(x_train), "rows_test": len(x_test)}, None
    y_test = labels_after(
        days, cutoff=test_cutoff, horizon_days=params.horizon_days, ids=x_test.index
    )
    truth = y_test["orders"].to_numpy(dtype=np.float64)
    plain_model = _fit_orders(x_train[_columns(False)].to_numpy(dtype=np.float64), y_train, params)
    plain = _predict_orders(plain_model, x_test, False)
    metrics: dict[str, float | int | None] = {}
    chosen: Blend | None = None
    if params.bgnbd and _has_bgnbd(x_train) and _has_bgnbd(x_test):
        bg_model = _fit_orders(x_train[_columns(True)].to_numpy(dtype=np.float64), y_train, params)
        bgnbd = x_test["bgnbd_orders"].to_numpy(dtype=np.float64)
        blend, deviances = choose_blend(
            truth, plain=plain, with_features=_predict_orders(bg_model, x_test, True), bgnbd=bgnbd
        )
        orders_model = bg_model if blend.features else plain_model
        chosen = blend
        buyers = np.isfinite(bgnbd)
        metrics.update(
            {
                "gbm_orders_mae": float(np.mean(np.abs(plain - truth))),
                "bgnbd_orders_mae_buyers": float(np.mean(np.abs(bgnbd[buyers] - truth[buyers]))),
                "orders_deviance": deviances[blend],
                "gbm_orders_deviance": deviances[Blend(False, 0.0)],
                "gbm_bgnbd_inputs_orders_deviance": deviances[Blend(True, 0.0)],
                "bgnbd_orders_deviance": deviances[Blend(False, 1.0)],
            }
        )
    else:
        blend, orders_model = GBM_ONLY, plain_model
    churn, revenue = _fit(x_train, y_train, params, uses_bgnbd=blend.features)
    data = x_test[_columns(blend.features)].to_numpy(dtype=np.float64)
    risk = _churn_probability(churn, data)
    predicted = _predict_orders(orders_model, x_test, blend.features)
    if "bgnbd_orders" in x_test:
        predicted = blended(predicted, x_test["bgnbd_orders"].to_numpy(np.float64), blend.weight)
    # Naive baseline: the same rate of purchase days as in the N days before the cut-off.
    naive = x_test["days_90"].to_numpy() * params.horizon_days / 90.0
    churned = y_test["churned"].to_numpy()
    auc = float(roc_auc_score(churned, risk)) if len(np.unique(churned)) == 2 else None
    return {
        "rows_train": len(x_train),
        "rows_test": len(x_test),
        "churn_auc": auc,
        "orders_mae": float(np.mean(np.abs(predicted - truth))),
        "orders_rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
        "naive_orders_mae": float(np.mean(np.abs(naive - truth))),
        "revenue_mae": float(
            np.mean(np.abs(np.clip(revenue.predict(data), 0, None) - y_test["revenue"]))
        ),
        **metrics,
    }, chosen


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
    if x.empty or y["orders"].sum() == 0 or not _buyers(x):
        raise InputError(
            f"not enough history: no purchases up to {last:%Y-%m-%d} or none in the "
            f"{params.horizon_days} days after it to learn from",
            hint="train with a later --as-of or a shorter horizon (TIDINGS_SCORES_HORIZON_DAYS)",
        )
    metrics, chosen = evaluate(engine, days, as_of=as_of, params=params)
    current = snapshot(engine, days, cutoff=as_of, events=params.events)
    bgnbd = fit_at(current) if params.bgnbd else None
    blend = GBM_ONLY if bgnbd is None or not _has_bgnbd(x) else chosen or FALLBACK_BLEND
    churn, revenue = _fit(x, y, params, uses_bgnbd=blend.features)
    orders = _fit_orders(x[_columns(blend.features)].to_numpy(dtype=np.float64), y, params)
    rfm = fit_rfm(current, k_range=range(params.k_min, params.k_max + 1), seed=params.seed)
    metrics.update(
        {
            "rfm_k": rfm.k,
            "rows_fit": len(x),
            "bgnbd_features": blend.features,
            "bgnbd_weight": blend.weight,
        }
    )
    return ScoreModels(
        version=model_version(params, as_of),
        as_of=as_of,
        params=params,
        churn=churn,
        orders=orders,
        revenue=revenue,
        rfm=rfm,
        bgnbd=bgnbd,
        blend=blend,
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

"""BG/NBD inside the CLV: the blend choice, BG/NBD inputs from a feature frame, the horizon
curve in predictions, and that the choice uses nothing after the cut-off."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from sqlalchemy import Engine, delete

from tests.segments.ml import synthetic
from tidings.crm.db import make_engine, upgrade
from tidings.crm.models import Order
from tidings.segments.ml import models as ml
from tidings.segments.ml.bgnbd import BgNbd, simulate
from tidings.segments.ml.blend import (
    WEIGHTS,
    Blend,
    bgnbd_columns,
    blended,
    choose_blend,
    expected,
    fit_at,
    poisson_deviance,
)
from tidings.segments.ml.features import FEATURES, build_features

FAST = ml.TrainParams(horizon_days=90, snapshots=2, max_iter=60, learning_rate=0.1)


def test_choose_blend_weighs_by_validation_deviance() -> None:
    rng = np.random.default_rng(0)
    mean = rng.gamma(0.5, 2.0, 20_000)
    truth = rng.poisson(mean).astype(np.float64)
    noisy = mean * rng.lognormal(0.0, 0.8, len(mean))
    # BG/NBD exact, GBMs noisy: all weight on BG/NBD.
    best, scores = choose_blend(truth, plain=noisy, with_features=noisy * 1.2, bgnbd=mean)
    assert best == Blend(False, 1.0) and len(scores) == 2 * len(WEIGHTS)
    # The GBM with BG/NBD inputs exact: it alone.
    best, _ = choose_blend(truth, plain=noisy, with_features=mean, bgnbd=noisy)
    assert best == Blend(True, 0.0)
    # Two independent, equally noisy estimates: about half and half.
    other = mean * rng.lognormal(0.0, 0.8, len(mean))
    best, _ = choose_blend(truth, plain=noisy, with_features=None, bgnbd=other)
    assert not best.features and 0.3 <= best.weight <= 0.7
    assert best.describe().endswith("% BG/NBD") and "GBM" in best.describe()


def test_blend_keeps_the_gbm_where_bgnbd_is_undefined() -> None:
    gbm = np.array([1.0, 2.0, 3.0])
    bgnbd = np.array([3.0, np.nan, 1.0])
    assert blended(gbm, bgnbd, 0.25).tolist() == [1.5, 2.0, 2.5]
    assert poisson_deviance(np.array([0.0, 2.0]), np.array([0.0, 2.0])) == pytest.approx(
        0.0, abs=1e-8
    )
    assert poisson_deviance(np.array([0.0, 2.0]), np.array([0.5, 1.0])) > 0


def _frame(x: np.ndarray, t_x: np.ndarray, age: np.ndarray, prospects: int) -> pd.DataFrame:
    nan = np.full(prospects, np.nan)
    return pd.DataFrame(
        {
            "frequency": np.concatenate([x + 1, np.zeros(prospects)]),
            "tenure_days": np.concatenate([age, nan]),
            "recency_days": np.concatenate([age - t_x, nan]),
        }
    )


def test_bgnbd_from_a_feature_frame() -> None:
    truth = BgNbd(r=0.5, alpha=20.0, a=0.8, b=2.5)
    x, t_x, age, _ = simulate(truth, np.random.default_rng(1).uniform(100, 400, 5000), seed=2)
    frame = _frame(x, np.floor(t_x), np.floor(age), prospects=10)
    model = fit_at(frame)
    assert model is not None and abs(model.r / truth.r - 1) < 0.3
    columns = bgnbd_columns(frame, model, horizon_days=90)
    assert columns.iloc[:5000].notna().all().all() and columns.iloc[5000:].isna().all().all()
    assert columns["bgnbd_orders"].iloc[:5000].tolist() == pytest.approx(
        model.expected_purchases(90, x, np.floor(t_x), np.floor(age)).tolist()
    )
    assert fit_at(_frame(np.zeros(3), np.zeros(3), np.full(3, 50.0), prospects=2)) is None
    assert np.isnan(expected(None, frame, 90)).all()


def _store(sqlite_url: str) -> Engine:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    synthetic.build(engine, per_kind=40)
    return engine


def test_prediction_follows_each_customers_bgnbd_curve(sqlite_url: str) -> None:
    engine = _store(sqlite_url)
    models = ml.train(engine, as_of=synthetic.AS_OF, params=FAST)
    assert models.bgnbd is not None and models.metrics["bgnbd_weight"] == models.blend.weight
    assert {"orders_deviance", "gbm_orders_deviance", "bgnbd_orders_deviance"} <= set(
        models.metrics
    )
    features = build_features(engine, cutoff=synthetic.AS_OF)
    buyer = features["frequency"].to_numpy() > 0
    bg_90, bg_270 = (expected(models.bgnbd, features, h) for h in (90, 270))
    gbm_only = replace(models, blend=replace(models.blend, weight=0.0))
    short = gbm_only.predict(features)["expected_orders"].to_numpy()
    long = gbm_only.predict(features, horizon_days=270)["expected_orders"].to_numpy()
    # Buyers: the GBM's 90 days times E[270] / E[90]; contacts without a purchase: times 3.
    assert long[buyer] == pytest.approx(short[buyer] * bg_270[buyer] / bg_90[buyer])
    assert long[~buyer] == pytest.approx(3 * short[~buyer])
    assert (bg_270[buyer] / bg_90[buyer] < 2.99).any()  # dropout bends the curve
    only_bgnbd = replace(models, blend=replace(models.blend, weight=1.0))
    assert only_bgnbd.predict(features, horizon_days=270)["expected_orders"].to_numpy()[
        buyer
    ] == pytest.approx(bg_270[buyer])
    half = replace(models, blend=replace(models.blend, weight=0.5))
    assert half.predict(features, horizon_days=270)["expected_orders"].to_numpy()[
        buyer
    ] == pytest.approx(0.5 * long[buyer] + 0.5 * bg_270[buyer])
    engine.dispose()


def test_choice_uses_nothing_after_the_cutoff(tmp_path: pytest.TempPathFactory) -> None:
    """The synthetic store has orders up to 120 days after the cut-off; deleting them must not
    change the BG/NBD fit, the blend chosen, the metrics or the predictions."""
    full = _store(f"sqlite:///{tmp_path}/full.db")
    cut = _store(f"sqlite:///{tmp_path}/cut.db")
    with cut.begin() as conn:
        gone = conn.execute(
            delete(Order).where(Order.placed_at > ml.end_of_day(synthetic.AS_OF))
        ).rowcount
    assert gone > 0
    a, b = (ml.train(engine, as_of=synthetic.AS_OF, params=FAST) for engine in (full, cut))
    assert a.bgnbd == b.bgnbd and a.blend == b.blend and a.metrics == b.metrics
    features = build_features(full, cutoff=synthetic.AS_OF)
    pd.testing.assert_frame_equal(
        a.predict(features, horizon_days=200), b.predict(features, horizon_days=200)
    )
    full.dispose()
    cut.dispose()


def test_without_bgnbd_or_without_an_inner_split(sqlite_url: str) -> None:
    engine = _store(sqlite_url)
    plain = ml.train(engine, as_of=synthetic.AS_OF, params=replace(FAST, bgnbd=False))
    assert plain.bgnbd is None and plain.blend == Blend()
    assert "orders_deviance" not in plain.metrics
    features = build_features(engine, cutoff=synthetic.AS_OF)
    short = plain.predict(features)["expected_orders"].to_numpy()
    long = plain.predict(features, horizon_days=270)["expected_orders"].to_numpy()
    assert long == pytest.approx(3 * short)  # the constant rate of models before BG/NBD
    # A model saved before BG/NBD existed (no such attributes) loads and predicts the same.
    legacy = copy.copy(plain)
    del legacy.__dict__["bgnbd"], legacy.__dict__["blend"]
    restored = pickle.loads(pickle.dumps(legacy))
    assert restored.bgnbd is None and restored.blend == Blend()
    pd.testing.assert_frame_equal(restored.predict(features), plain.predict(features))
    # With a 200-day horizon the inner split's training rows are 400 days back, before any
    # purchase: nothing to judge BG/NBD on, so the GBM takes its inputs, not blended.
    long_horizon = ml.train(
        engine, as_of=synthetic.AS_OF, params=replace(FAST, horizon_days=200, snapshots=1)
    )
    assert long_horizon.bgnbd is not None and "churn_auc" not in long_horizon.metrics
    assert "orders_deviance" not in long_horizon.metrics
    assert long_horizon.blend == ml.FALLBACK_BLEND
    assert list(FEATURES)[:2] == ["frequency", "recency_days"]
    engine.dispose()

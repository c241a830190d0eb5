"""BG/NBD inside tidings' CLV: inputs to the gradient-boosted models, a blend, and its choice.

:mod:`segments.ml.bgnbd` is fitted on the buyers of each cut-off (each training snapshot, and
the final cut-off for scoring), from the feature frame alone: ``x = frequency - 1``,
``t_x = tenure_days - recency_days``, ``T = tenure_days``. It then gives

* two model inputs, :data:`BGNBD_FEATURES`: the expected purchase days in the next N days (the
  trained horizon) and P(alive);
* the expected purchase days for any horizon, which the CLV uses two ways: it extrapolates the
  GBM's N-day prediction to another horizon h by each customer's own BG/NBD curve
  ``E[h] / E[N]`` (instead of a constant ``h / N``), and it is blended in:
  ``(1 - w) * GBM + w * BG/NBD``.

Which GBM (with or without the BG/NBD inputs) and the weight ``w`` are chosen by
:func:`choose_blend` on an inner time split that ends at the training cut-off (see
:func:`segments.ml.models.evaluate`), by the mean Poisson deviance of the N-day predictions:
never on data after the cut-off.

>>> model = fit_at(features)                                     # doctest: +SKIP
>>> bgnbd_columns(features, model, horizon_days=90).head()       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from numpy.typing import NDArray

from tidings.segments.ml.bgnbd import BgNbd, fit

Floats = NDArray[np.float64]

#: Model inputs added when the GBM uses BG/NBD (NaN for contacts without a purchase).
BGNBD_FEATURES: tuple[str, ...] = ("bgnbd_orders", "bgnbd_alive")

#: Blend weights tried for BG/NBD's share of the expected purchase days.
WEIGHTS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))


@dataclass(frozen=True)
class Blend:
    """How the CLV combines the GBM and BG/NBD (see the module docstring)."""

    features: bool = False  # the GBM takes BGNBD_FEATURES as inputs
    weight: float = 0.0  # BG/NBD's share of the expected purchase days, 0..1

    def describe(self) -> str:
        gbm = "GBM with BG/NBD inputs" if self.features else "GBM"
        if self.weight >= 1.0:
            return "BG/NBD alone (the GBM for contacts without a purchase)"
        if self.weight <= 0.0:
            return gbm
        return f"{1 - self.weight:.0%} {gbm} + {self.weight:.0%} BG/NBD"


#: The GBM alone (what models trained before BG/NBD existed do).
GBM_ONLY = Blend()


def bgnbd_inputs(features: pd.DataFrame) -> tuple[NDArray[np.bool_], Floats, Floats, Floats]:
    """``(buyer mask, x, t_x, T)`` in days from a feature frame; x, t_x, T of buyers only."""
    buyer = features["frequency"].to_numpy(dtype=np.float64) > 0
    tenure = features["tenure_days"].to_numpy(dtype=np.float64)[buyer]
    recency = features["recency_days"].to_numpy(dtype=np.float64)[buyer]
    x = features["frequency"].to_numpy(dtype=np.float64)[buyer] - 1.0
    return buyer, x, tenure - recency, tenure


def fit_at(features: pd.DataFrame) -> BgNbd | None:
    """BG/NBD fitted on the buyers of ``features``; None without any repeat purchase or when
    the optimiser did not converge (then the GBMs go without it at that cut-off)."""
    _, x, t_x, age = bgnbd_inputs(features)
    if not (x > 0).any():
        return None
    model = fit(x, t_x, age)
    return model if model.converged else None


def expected(model: BgNbd | None, features: pd.DataFrame, horizon_days: float) -> Floats:
    """BG/NBD's expected purchase days in the next ``horizon_days``; NaN for non-buyers."""
    out = np.full(len(features), np.nan)
    if model is not None:
        buyer, x, t_x, age = bgnbd_inputs(features)
        out[buyer] = model.expected_purchases(horizon_days, x, t_x, age)
    return out


def bgnbd_columns(
    features: pd.DataFrame, model: BgNbd | None, *, horizon_days: int
) -> pd.DataFrame:
    """:data:`BGNBD_FEATURES` for every row of ``features`` (NaN where undefined)."""
    alive = np.full(len(features), np.nan)
    if model is not None:
        buyer, x, t_x, age = bgnbd_inputs(features)
        alive[buyer] = model.p_alive(x, t_x, age)
    return pd.DataFrame(
        {"bgnbd_orders": expected(model, features, horizon_days), "bgnbd_alive": alive},
        index=features.index,
    )


def blended(gbm: Floats, bgnbd: Floats, weight: float) -> Floats:
    """``(1 - weight) * gbm + weight * bgnbd`` where BG/NBD is defined, else the GBM."""
    mix = (1.0 - weight) * gbm + weight * bgnbd
    return np.asarray(np.where(np.isnan(bgnbd), gbm, mix), dtype=np.float64)


def poisson_deviance(truth: Floats, predicted: Floats) -> float:
    """Mean Poisson deviance of expected counts (lower is better; 0 for a perfect fit)."""
    mu = np.clip(predicted, 1e-9, None)
    ratio = np.where(truth > 0, truth * np.log(np.where(truth > 0, truth, 1.0) / mu), 0.0)
    return float(np.mean(2.0 * (ratio - (truth - mu))))


def choose_blend(
    truth: Floats, *, plain: Floats, with_features: Floats | None, bgnbd: Floats
) -> tuple[Blend, dict[Blend, float]]:
    """The blend with the lowest mean Poisson deviance against ``truth``, and all deviances.

    ``plain`` and ``with_features`` are the two GBMs' N-day predictions on the validation rows
    (``with_features`` None when BG/NBD could not be fitted), ``bgnbd`` BG/NBD's (NaN for
    non-buyers). Ties keep the earlier candidate: the plain GBM, then smaller weights.
    """
    candidates: dict[Blend, float] = {}
    variants = [(False, plain)] + ([(True, with_features)] if with_features is not None else [])
    usable = bool(np.isfinite(bgnbd).any())
    for uses_features, gbm in variants:
        for weight in WEIGHTS if usable else (0.0,):
            candidates[Blend(uses_features, weight)] = poisson_deviance(
                truth, blended(gbm, bgnbd, weight)
            )
    best = min(candidates, key=lambda blend: candidates[blend])
    return best, candidates

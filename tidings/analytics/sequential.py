"""mSPRT: a sequential test whose p-value stays valid however often it is looked at.

Marketers look at an experiment every day. A fixed-horizon test checked daily and stopped at
the first ``p < 0.05`` declares a false winner far more often than 5% of the time (the A/A
simulation in ``tests/analytics/test_peeking.py`` measures it). The mixture sequential
probability ratio test of Johari, Koomen, Pekelis & Walsh, "Peeking at A/B tests" (KDD 2017)
and Johari, Pekelis & Walsh, "Always valid inference" (Operations Research 2022) gives an
*always-valid* p-value instead: the chance that it ever drops below alpha, at any of any number
of looks, is at most alpha under the null.

The difference of the two arms, ``d = treatment - control``, is approximately normal with
variance ``V``. Mixing the alternative ``d ~ N(0, tau**2 * s**2)``, with ``s**2`` a reference
variance of one observation, the likelihood ratio against ``d = 0`` is::

    Lambda = sqrt(m / (m + tau**2)) * exp(tau**2 * z**2 / (2 * (m + tau**2)))

where ``z = d / sqrt(V)`` is the usual test statistic and ``m = V / s**2`` (``1/n1 + 1/n2``
for proportions). The always-valid p-value is the running minimum over looks of
``min(1, 1 / Lambda)``; carry it from one look to the next with ``previous_p_value``.

* Proportions: ``s**2 = pbar * (1 - pbar)`` from the pooled rate and ``V = s**2 * m`` (the
  null's variance) for the statistic; the interval uses the unpooled variance.
* Revenue per recipient: ``V`` is Welch's ``v1/n1 + v2/n2`` and ``s**2`` the pooled variance.

``tau`` (:data:`DEFAULT_MIXTURE_SD`) is the spread of the effects the test is tuned to find,
in standard deviations of one observation: 0.05 is a 1-point lift on a 5% rate (0.05 * 0.22 =
0.011). Validity holds for any fixed ``tau``; only power moves, and not much.

>>> from tidings.analytics.stats import ArmCounts
>>> a = ArmCounts("A", 20_000, 1_000)
>>> b = ArmCounts("B", 20_000, 1_150)
>>> r = msprt_test(a, b)
>>> r.peeking_safe, round(r.statistic, 2), round(r.p_value, 4)
(True, 3.33, 0.025)
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tidings.analytics.stats import ArmCounts, Comparison

DEFAULT_MIXTURE_SD = 0.05
"""``tau``: standard deviation of the mixing distribution, in units of one observation's SD."""

TEST_NAME = "mSPRT (always-valid p-value, valid under continuous peeking)"

Floats = NDArray[np.float64]


def log_likelihood_ratio(z: ArrayLike, m: ArrayLike, tau: float = DEFAULT_MIXTURE_SD) -> Floats:
    """``log Lambda`` of the normal-mixture SPRT from the z statistic and ``m = V / s**2``.

    Vectorised: ``z`` and ``m`` broadcast (arrays of experiments by looks work).
    """
    if tau <= 0:
        raise ValueError(f"the mixture standard deviation must be > 0, got {tau}")
    z_arr = np.asarray(z, dtype=np.float64)
    m_arr = np.asarray(m, dtype=np.float64)
    t2 = tau * tau
    out: Floats = 0.5 * np.log(m_arr / (m_arr + t2)) + t2 * z_arr**2 / (2 * (m_arr + t2))
    return out


def p_values(z: ArrayLike, m: ArrayLike, tau: float = DEFAULT_MIXTURE_SD) -> Floats:
    """``min(1, 1 / Lambda)`` at each look: take the running minimum over looks yourself."""
    out: Floats = np.minimum(1.0, np.exp(-log_likelihood_ratio(z, m, tau)))
    return out


def proportion_p_values(
    n_control: ArrayLike,
    x_control: ArrayLike,
    n_treatment: ArrayLike,
    x_treatment: ArrayLike,
    tau: float = DEFAULT_MIXTURE_SD,
) -> Floats:
    """Per-look mSPRT p-values for two proportions from (cumulative) counts, vectorised.

    A look where the pooled rate is 0 or 1 (no information yet) gives p = 1. Take
    ``np.minimum.accumulate`` along the looks to get the always-valid p-value.
    """
    n1 = np.asarray(n_control, dtype=np.float64)
    n2 = np.asarray(n_treatment, dtype=np.float64)
    x1 = np.asarray(x_control, dtype=np.float64)
    x2 = np.asarray(x_treatment, dtype=np.float64)
    pooled = (x1 + x2) / (n1 + n2)
    s2 = pooled * (1 - pooled)
    m = 1 / n1 + 1 / n2
    informative = s2 > 0
    safe_s2 = np.where(informative, s2, 1.0)
    z = (x2 / n2 - x1 / n1) / np.sqrt(safe_s2 * m)
    out: Floats = np.where(informative, p_values(z, m, tau), 1.0)
    return out


def _always_valid_half_width(v: float, s2: float, tau: float, alpha: float) -> float:
    """Half-width of the always-valid interval: ``{d0 : Lambda(d0) < 1 / alpha}``."""
    t2s2 = tau * tau * s2
    return math.sqrt(v * (v + t2s2) / t2s2 * (2 * math.log(1 / alpha) + math.log((v + t2s2) / v)))


def msprt_test(
    control: ArmCounts,
    treatment: ArmCounts,
    *,
    metric: str = "proportion",
    alpha: float = 0.05,
    tau: float = DEFAULT_MIXTURE_SD,
    previous_p_value: float = 1.0,
) -> Comparison:
    """mSPRT of ``treatment - control`` at this look; ``peeking_safe`` is True.

    ``metric`` is ``"proportion"`` (uses ``successes``) or ``"revenue"`` (revenue per
    recipient from the sums). ``previous_p_value`` is the always-valid p-value stored at the
    previous look (1 at the first); the result's ``p_value`` is the running minimum, so store it
    for the next look. ``statistic`` is the usual z; ``ci_low .. ci_high`` is the always-valid
    interval at this look (intersect with earlier ones for the running interval).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    n1, n2 = control.recipients, treatment.recipients
    if metric == "proportion":
        if min(n1, n2) == 0:
            raise ValueError("both arms need recipients")
        c_val, t_val = control.rate, treatment.rate
        pooled = (control.successes + treatment.successes) / (n1 + n2)
        s2 = pooled * (1 - pooled)
        v_null = s2 * (1 / n1 + 1 / n2)
        v_ci = c_val * (1 - c_val) / n1 + t_val * (1 - t_val) / n2
    elif metric == "revenue":
        if min(n1, n2) < 2:
            raise ValueError("both arms need at least 2 recipients")
        c_val, t_val = control.revenue_mean, treatment.revenue_mean
        v1, v2 = control.revenue_var, treatment.revenue_var
        s2 = ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)
        v_null = v_ci = v1 / n1 + v2 / n2
    else:
        raise ValueError(f"metric must be 'proportion' or 'revenue', got {metric!r}")
    diff = t_val - c_val
    if s2 > 0 and v_null > 0:
        z = diff / math.sqrt(v_null)
        p_now = float(p_values(z, v_null / s2, tau))
    else:  # no variation in either arm yet: nothing to learn
        z, p_now = 0.0, 1.0
    p = min(previous_p_value, p_now)
    informative = s2 > 0 and v_ci > 0
    half = _always_valid_half_width(v_ci, s2, tau, alpha) if informative else math.inf
    return Comparison.of(
        TEST_NAME,
        control,
        treatment,
        values=(c_val, t_val),
        statistic=z,
        p_value=p,
        half_width=half,
        alpha=alpha,
        peeking_safe=True,
    )

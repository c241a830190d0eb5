"""Probability to be best: the exact two-arm sum against quadrature, Monte Carlo, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats  # type: ignore[import-untyped]

from tidings.analytics.bayes import (
    prob_beta_greater,
    probability_to_be_best,
    revenue_probability_to_be_best,
)
from tidings.analytics.stats import ArmCounts


def _by_quadrature(a1, b1, a2, b2):
    x1, x2 = stats.beta(a1, b1), stats.beta(a2, b2)
    lo = min(x1.ppf(1e-12), x2.ppf(1e-12))
    hi = max(x1.ppf(1 - 1e-12), x2.ppf(1 - 1e-12))
    value, _ = integrate.quad(
        lambda t: x1.pdf(t) * x2.sf(t),
        lo,
        hi,
        points=[x1.mean(), x2.mean()],
        limit=500,
        epsabs=1e-13,
    )
    return value


@pytest.mark.parametrize(
    "params",
    [
        (1, 1, 2, 1),
        (51, 951, 71, 931),
        (301, 9701, 361, 9641),
        (5, 3, 2, 9),
        (1201, 18801, 1151, 18851),
    ],
)
def test_exact_two_arm_probability_matches_quadrature(params):
    assert prob_beta_greater(*params) == pytest.approx(_by_quadrature(*params), abs=1e-9)


def test_two_arms_exact_and_symmetric():
    arms = [ArmCounts("A", 1000, 50), ArmCounts("B", 1000, 70)]
    probs = probability_to_be_best(arms)
    assert probs["B"] == pytest.approx(_by_quadrature(51, 951, 71, 931), abs=1e-9)
    assert sum(probs.values()) == pytest.approx(1.0)
    swapped = probability_to_be_best(arms[::-1])
    assert swapped["B"] == pytest.approx(probs["B"], abs=1e-12)
    equal = probability_to_be_best([ArmCounts("A", 500, 20), ArmCounts("B", 500, 20)])
    assert equal["A"] == pytest.approx(0.5, abs=1e-12)


def test_monte_carlo_for_more_arms():
    arms = [ArmCounts("A", 1000, 50), ArmCounts("B", 1000, 70), ArmCounts("C", 1000, 50)]
    probs = probability_to_be_best(arms)
    assert probs == probability_to_be_best(arms)  # fixed seed
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs["A"] == pytest.approx(probs["C"], abs=0.01)  # identical arms
    # Against an independent Monte Carlo estimate with scipy's Beta sampler.
    rs = np.random.default_rng(99)
    draws = np.column_stack(
        [
            stats.beta(1 + a.successes, 1 + a.recipients - a.successes).rvs(
                400_000, random_state=rs
            )
            for a in arms
        ]
    )
    ref = np.bincount(draws.argmax(axis=1), minlength=3) / 400_000
    assert [probs[k] for k in "ABC"] == pytest.approx(list(ref), abs=0.006)
    # Two of the arms: the exact answer against the same Monte Carlo draws.
    two = probability_to_be_best(arms[:2])
    assert two["B"] == pytest.approx((draws[:, 1] > draws[:, 0]).mean(), abs=0.002)


def test_revenue_probability_matches_the_normal_closed_form():
    a = ArmCounts("A", 4000, revenue=8000.0, revenue_sq=4000 * (2.0**2 + 30.0**2))
    b = ArmCounts("B", 4000, revenue=9400.0, revenue_sq=4000 * (2.35**2 + 31.0**2))
    probs = revenue_probability_to_be_best([a, b])
    se = math.sqrt(a.revenue_var / 4000 + b.revenue_var / 4000)
    exact = stats.norm.cdf((b.revenue_mean - a.revenue_mean) / se)
    assert probs["B"] == pytest.approx(exact, abs=0.005)


def test_validation():
    with pytest.raises(ValueError):
        prob_beta_greater(0, 1, 1, 1)
    with pytest.raises(ValueError):
        probability_to_be_best([ArmCounts("A", 10, 1)])
    with pytest.raises(ValueError):
        probability_to_be_best([ArmCounts("A", 10, 1), ArmCounts("B", 10, 1)], prior=(0, 1))

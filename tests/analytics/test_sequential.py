"""mSPRT: the closed form against numerical integration, intervals, running minimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats  # type: ignore[import-untyped]

from tidings.analytics.sequential import (
    DEFAULT_MIXTURE_SD,
    log_likelihood_ratio,
    msprt_test,
    p_values,
    proportion_p_values,
)
from tidings.analytics.stats import ArmCounts, z_test


def _mixture_ratio_by_quadrature(d, v, s2, tau):
    """Lambda = integral of N(d; theta, V) / N(d; 0, V) over theta ~ N(0, tau^2 s^2)."""
    prior = stats.norm(0, tau * math.sqrt(s2))
    sd = math.sqrt(v)

    def integrand(theta):
        return math.exp(
            stats.norm.logpdf(d, theta, sd) - stats.norm.logpdf(d, 0, sd) + prior.logpdf(theta)
        )

    width = 12 * max(prior.std(), sd) + abs(d)
    value, _ = integrate.quad(integrand, -width, width, points=[0.0, d], limit=200)
    return value


@pytest.mark.parametrize(
    ("d", "v", "s2", "tau"),
    [
        (0.01, 1e-5, 0.05, 0.05),
        (-0.004, 4e-6, 0.03, 0.1),
        (0.0, 1e-4, 0.2, 0.05),
        (2.5, 0.8, 900.0, 0.05),
    ],
)
def test_closed_form_equals_the_mixture_integral(d, v, s2, tau):
    z, m = d / math.sqrt(v), v / s2
    closed = math.exp(float(log_likelihood_ratio(z, m, tau)))
    assert closed == pytest.approx(_mixture_ratio_by_quadrature(d, v, s2, tau), rel=1e-7)


def test_msprt_proportions_statistic_and_p_value():
    a, b = ArmCounts("A", 20_000, 1_000), ArmCounts("B", 20_000, 1_150)
    r = msprt_test(a, b)
    fixed = z_test(a, b)
    assert r.peeking_safe and "valid under continuous peeking" in r.test
    assert r.statistic == pytest.approx(fixed.statistic)  # same z, a stricter boundary
    m = 1 / 20_000 + 1 / 20_000
    assert r.p_value == pytest.approx(float(p_values(fixed.statistic, m)))
    assert r.p_value > fixed.p_value  # the price of peeking safety
    assert r.ci_low < fixed.ci_low < fixed.ci_high < r.ci_high


def test_always_valid_interval_is_the_set_of_accepted_differences():
    a, b = ArmCounts("A", 8_000, 400), ArmCounts("B", 8_000, 470)
    alpha = 0.05
    r = msprt_test(a, b, alpha=alpha)
    v = a.rate * (1 - a.rate) / 8_000 + b.rate * (1 - b.rate) / 8_000
    pooled = (400 + 470) / 16_000
    s2 = pooled * (1 - pooled)
    # At either end of the interval, the mixture ratio for H0: d = d0 is exactly 1 / alpha.
    for d0 in (r.ci_low, r.ci_high):
        llr = float(log_likelihood_ratio((r.effect - d0) / math.sqrt(v), v / s2))
        assert llr == pytest.approx(math.log(1 / alpha), rel=1e-9)


def test_p_value_is_a_running_minimum():
    a, b = ArmCounts("A", 20_000, 1_000), ArmCounts("B", 20_000, 1_150)
    first = msprt_test(a, b)
    later = msprt_test(
        ArmCounts("A", 21_000, 1_060), ArmCounts("B", 21_000, 1_160), previous_p_value=first.p_value
    )
    fresh = msprt_test(ArmCounts("A", 21_000, 1_060), ArmCounts("B", 21_000, 1_160))
    assert fresh.p_value > first.p_value
    assert later.p_value == first.p_value


def test_vectorised_p_values_equal_the_scalar_test():
    rng = np.random.default_rng(5)
    n1, n2 = rng.integers(100, 5000, 20), rng.integers(100, 5000, 20)
    x1, x2 = rng.binomial(n1, 0.05), rng.binomial(n2, 0.06)
    vec = proportion_p_values(n1, x1, n2, x2)
    for i in range(20):
        r = msprt_test(
            ArmCounts("A", int(n1[i]), int(x1[i])), ArmCounts("B", int(n2[i]), int(x2[i]))
        )
        assert vec[i] == pytest.approx(r.p_value, rel=1e-12)
    assert proportion_p_values(100, 0, 100, 0)[()] == 1.0


def test_revenue_msprt_uses_welch_variance():
    rng = np.random.default_rng(9)
    a = np.where(rng.random(5000) < 0.05, rng.lognormal(3.5, 0.7, 5000), 0.0)
    b = np.where(rng.random(5000) < 0.065, rng.lognormal(3.5, 0.7, 5000), 0.0)
    arm = lambda k, x: ArmCounts(k, len(x), revenue=float(x.sum()), revenue_sq=float((x**2).sum()))  # noqa: E731
    r = msprt_test(arm("A", a), arm("B", b), metric="revenue")
    v = a.var(ddof=1) / 5000 + b.var(ddof=1) / 5000
    s2 = (a.var(ddof=1) + b.var(ddof=1)) / 2
    z = (b.mean() - a.mean()) / math.sqrt(v)
    assert r.statistic == pytest.approx(z, rel=1e-9)
    assert r.p_value == pytest.approx(min(1.0, math.exp(-float(log_likelihood_ratio(z, v / s2)))))
    assert r.peeking_safe


def test_validation():
    with pytest.raises(ValueError, match="metric"):
        msprt_test(ArmCounts("A", 10, 1), ArmCounts("B", 10, 2), metric="clicks")
    with pytest.raises(ValueError, match="mixture"):
        log_likelihood_ratio(1.0, 0.1, tau=0)
    assert DEFAULT_MIXTURE_SD > 0

"""Every fixed-horizon statistic against scipy / statsmodels on the same data."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]
from statsmodels.stats.multitest import multipletests  # type: ignore[import-untyped]
from statsmodels.stats.power import NormalIndPower  # type: ignore[import-untyped]
from statsmodels.stats.proportion import (  # type: ignore[import-untyped]
    confint_proportions_2indep,
    power_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)

from tidings.analytics.stats import (
    ArmCounts,
    chi_squared_test,
    holm,
    incremental_lift,
    sample_size,
    srm_check,
    welch_test,
    welch_vs_control,
    z_test,
)

PAIRS = [
    ((10_000, 300), (10_000, 360)),
    ((1_000, 50), (1_000, 75)),
    ((5_123, 211), (4_877, 190)),
    ((200, 3), (180, 9)),
    ((50_000, 20_000), (49_000, 19_900)),
]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_z_test_matches_statsmodels(a, b):
    (n1, x1), (n2, x2) = a, b
    r = z_test(ArmCounts("A", n1, x1), ArmCounts("B", n2, x2))
    z, p = proportions_ztest([x2, x1], [n2, n1])  # pooled variance, treatment - control
    assert r.statistic == pytest.approx(z, rel=1e-12)
    assert r.p_value == pytest.approx(p, rel=1e-9)
    # Hand formula with scipy's normal distribution.
    pooled = (x1 + x2) / (n1 + n2)
    z_hand = (x2 / n2 - x1 / n1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert r.p_value == pytest.approx(2 * stats.norm.sf(abs(z_hand)), rel=1e-9)
    lo, hi = confint_proportions_2indep(x2, n2, x1, n1, method="wald", compare="diff")
    assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi), rel=1e-9)
    assert r.effect == pytest.approx(x2 / n2 - x1 / n1)
    assert r.p_adjusted == r.p_value


def test_z_test_without_any_success_is_not_significant():
    r = z_test(ArmCounts("A", 100, 0), ArmCounts("B", 100, 0))
    assert (r.statistic, r.p_value, r.effect) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize(
    "table",
    [
        [(2000, 100), (2000, 140), (2000, 104)],
        [(3000, 90), (2900, 95), (3100, 120), (3050, 88)],
        [(500, 250), (520, 280), (480, 230), (510, 240), (495, 300)],
    ],
)
def test_chi_squared_matches_scipy_and_holm_matches_statsmodels(table):
    arms = [ArmCounts(chr(65 + i), n, x) for i, (n, x) in enumerate(table)]
    r = chi_squared_test(arms)
    observed = np.array([[x, n - x] for n, x in table])
    ref = stats.chi2_contingency(observed, correction=False)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.dof == ref.dof
    raw = []
    for arm, c in zip(arms[1:], r.comparisons, strict=True):
        pair = np.array(
            [
                [arms[0].successes, arms[0].recipients - arms[0].successes],
                [arm.successes, arm.recipients - arm.successes],
            ]
        )
        ref2 = stats.chi2_contingency(pair, correction=False)
        assert c.statistic == pytest.approx(ref2.statistic, rel=1e-9)
        assert c.p_value == pytest.approx(ref2.pvalue, rel=1e-9)
        assert c.control == "A" and c.treatment == arm.name
        assert c.confidence == pytest.approx(1 - 0.05 / (len(arms) - 1))  # Bonferroni interval
        raw.append(ref2.pvalue)
    _, adjusted, _, _ = multipletests(raw, method="holm")
    assert [c.p_adjusted for c in r.comparisons] == pytest.approx(list(adjusted), rel=1e-9)


def test_chi_squared_control_can_be_named():
    arms = [ArmCounts("A", 2000, 100), ArmCounts("B", 2000, 140), ArmCounts("C", 2000, 104)]
    r = chi_squared_test(arms, control="B")
    assert r.control == "B"
    assert [c.treatment for c in r.comparisons] == ["A", "C"]
    assert all(c.effect < 0 for c in r.comparisons)


def test_holm_matches_statsmodels():
    rng = np.random.default_rng(1)
    for _ in range(12):  # statsmodels takes ~0.1 s a call
        p = rng.uniform(0, 0.2, size=rng.integers(1, 8))
        _, ref, _, _ = multipletests(p, method="holm")
        assert holm(list(p)) == pytest.approx(list(ref), rel=1e-12)


def _revenue_sample(rng, n, buy_rate, mean_order):
    buys = rng.random(n) < buy_rate
    return np.where(buys, rng.lognormal(np.log(mean_order), 0.8, n).round(2), 0.0)


def _arm(name, values, *, as_decimal=False):
    if as_decimal:
        dec = [Decimal(str(v)) for v in values]
        return ArmCounts(name, len(values), revenue=sum(dec), revenue_sq=sum(d * d for d in dec))
    return ArmCounts(
        name, len(values), revenue=float(np.sum(values)), revenue_sq=float(np.sum(values**2))
    )


@pytest.mark.parametrize("as_decimal", [False, True])
@pytest.mark.parametrize(
    ("n1", "n2", "lift"), [(4000, 4000, 1.0), (3000, 5000, 1.15), (40, 25, 1.3)]
)
def test_welch_matches_scipy_on_raw_samples(n1, n2, lift, as_decimal):
    rng = np.random.default_rng(n1 + n2)
    a = _revenue_sample(rng, n1, 0.05, 60.0)
    b = _revenue_sample(rng, n2, 0.05 * lift, 60.0)
    r = welch_test(_arm("A", a, as_decimal=as_decimal), _arm("B", b, as_decimal=as_decimal))
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.df == pytest.approx(ref.df, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert r.effect == pytest.approx(b.mean() - a.mean())


def test_welch_variance_is_exact_for_large_offsets():
    # Values near 1e7 with a small spread: the textbook float formula sumsq - sum**2/n loses
    # every digit; the exact rational computation does not.
    rng = np.random.default_rng(7)
    a = 1e7 + rng.integers(0, 100, 500) / 100
    b = 1e7 + rng.integers(0, 100, 500) / 100 + 0.05
    dec = lambda xs: [Decimal(float(x)) for x in xs]  # noqa: E731
    arm = lambda name, xs: ArmCounts(  # noqa: E731
        name, len(xs), revenue=sum(dec(xs)), revenue_sq=sum(d * d for d in dec(xs))
    )
    r = welch_test(arm("A", a), arm("B", b))
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-6)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-5)


def test_welch_against_control_is_holm_adjusted():
    rng = np.random.default_rng(3)
    samples = {
        k: _revenue_sample(rng, 3000, rate, 50.0)
        for k, rate in [("A", 0.05), ("B", 0.07), ("C", 0.05)]
    }
    comps = welch_vs_control([_arm(k, v) for k, v in samples.items()])
    raw = [stats.ttest_ind(samples[k], samples["A"], equal_var=False).pvalue for k in "BC"]
    _, adjusted, _, _ = multipletests(raw, method="holm")
    assert [c.p_adjusted for c in comps] == pytest.approx(list(adjusted), rel=1e-9)
    assert [c.p_value for c in comps] == pytest.approx(raw, rel=1e-9)


def test_welch_with_constant_arms():
    same = welch_test(
        ArmCounts("A", 3, revenue=6, revenue_sq=12), ArmCounts("B", 3, revenue=6, revenue_sq=12)
    )
    assert (same.p_value, same.effect) == (1.0, 0.0)
    apart = welch_test(
        ArmCounts("A", 3, revenue=6, revenue_sq=12), ArmCounts("B", 3, revenue=9, revenue_sq=27)
    )
    assert apart.p_value == 0.0 and apart.statistic == math.inf


@pytest.mark.parametrize(
    ("assigned", "weights"),
    [
        ({"A": 5000, "B": 5400}, {"A": 50, "B": 50}),
        ({"A": 5000, "B": 5100}, {"A": 1, "B": 1}),
        ({"A": 2000, "B": 2050, "holdout": 480}, {"A": 45, "B": 45, "holdout": 10}),
        ({"A": 900, "B": 3100}, {"A": 0.2, "B": 0.8}),
    ],
)
def test_srm_matches_scipy_chisquare(assigned, weights):
    r = srm_check(assigned, weights)
    total, wsum = sum(assigned.values()), sum(weights.values())
    expected = [total * weights[k] / wsum for k in assigned]
    ref = stats.chisquare(list(assigned.values()), expected)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.mismatch == (ref.pvalue < 0.001)


def test_srm_flags_at_one_in_a_thousand():
    assert srm_check({"A": 5000, "B": 5400}, {"A": 50, "B": 50}).mismatch
    ok = srm_check({"A": 5000, "B": 5100}, {"A": 50, "B": 50})
    assert not ok.mismatch
    assert "matches" in ok.reason
    with pytest.raises(ValueError, match="differ"):
        srm_check({"A": 1, "B": 2}, {"A": 1, "C": 1})


@pytest.mark.parametrize(
    ("baseline", "mde", "alpha", "power"),
    [
        (0.03, 0.10, 0.05, 0.8),
        (0.05, 0.20, 0.05, 0.9),
        (0.20, 0.05, 0.01, 0.8),
        (0.5, 0.02, 0.1, 0.8),
    ],
)
def test_sample_size_matches_statsmodels(baseline, mde, alpha, power):
    n = sample_size(baseline=baseline, mde=mde, alpha=alpha, power=power)
    p2 = baseline * (1 + mde)
    ref = samplesize_proportions_2indep_onetail(p2 - baseline, baseline, power, alpha=alpha)
    assert n == math.ceil(ref)
    # n is the smallest per-arm size whose power (statsmodels) reaches the target; statsmodels'
    # power also counts the far rejection tail, which the sample-size formula (as usual) leaves
    # out, so n - 1 may exceed the target by that tail's ~1e-5.
    assert power_proportions_2indep(p2 - baseline, baseline, n, alpha=alpha).power >= power
    assert (
        power_proportions_2indep(p2 - baseline, baseline, n - 1, alpha=alpha).power < power + 1e-4
    )
    # Cohen's h (arcsine) approximation agrees to within 1%.
    h = proportion_effectsize(p2, baseline)
    approx = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power)
    assert n == pytest.approx(approx, rel=0.01)


def test_sample_size_reference_values():
    # 3% baseline, 10% relative lift (to 3.3%), 5% two-sided, 80% power.
    assert sample_size(baseline=0.03, mde=0.10, alpha=0.05, power=0.8) == 53_211
    assert sample_size(0.03, 0.003, relative=False) == 53_211
    with pytest.raises(ValueError):
        sample_size(0.6, 1.0)


def test_incremental_lift_against_holdout():
    rng = np.random.default_rng(11)
    treated = _revenue_sample(rng, 9000, 0.06, 40.0)
    holdout = _revenue_sample(rng, 1000, 0.04, 40.0)
    t = ArmCounts(
        "treated", 9000, int((treated > 0).sum()), float(treated.sum()), float((treated**2).sum())
    )
    h = ArmCounts(
        "holdout", 1000, int((holdout > 0).sum()), float(holdout.sum()), float((holdout**2).sum())
    )
    lift = incremental_lift(t, h)
    _, p = proportions_ztest([t.successes, h.successes], [9000, 1000])
    assert lift.conversion.p_value == pytest.approx(p, rel=1e-9)
    assert lift.conversion.control == "holdout"
    assert lift.revenue is not None
    assert lift.revenue.p_value == pytest.approx(
        stats.ttest_ind(treated, holdout, equal_var=False).pvalue, rel=1e-9
    )


def test_arm_counts_validation():
    with pytest.raises(ValueError, match="successes"):
        ArmCounts("A", 10, 11)
    with pytest.raises(ValueError, match="recipients"):
        ArmCounts("A", -1)
    with pytest.raises(ValueError, match="inconsistent"):
        _ = ArmCounts("A", 3, revenue=10, revenue_sq=1).revenue_var
    with pytest.raises(ValueError, match="unique"):
        chi_squared_test([ArmCounts("A", 1, 0), ArmCounts("A", 1, 0)])

"""Fixed-horizon experiment statistics, computed from per-arm aggregates.

Every function here takes counts a SQL ``GROUP BY variant`` can return (recipients, successes,
sum and sum of squares of per-recipient revenue), so nothing needs the raw rows:

* :func:`z_test`: two-proportion z-test (pooled standard error for the statistic, as
  ``statsmodels.stats.proportion.proportions_ztest``; unpooled Wald interval for the difference).
* :func:`chi_squared_test`: more than two arms. The omnibus k x 2 chi-squared test, and each
  challenger against the **control** by a 2 x 2 chi-squared test (no continuity correction, so
  ``chi2 = z**2`` of :func:`z_test`), Holm-adjusted across the k - 1 comparisons; the intervals are
  Bonferroni-adjusted (level ``1 - alpha / (k - 1)``), so they never claim more than the test.
* :func:`welch_test`: Welch's t-test on revenue per recipient (unequal variances,
  Welch-Satterthwaite degrees of freedom). Variances come from ``n``, ``sum`` and ``sum of
  squares`` in exact rational arithmetic, so large sums do not cancel catastrophically.
* :func:`srm_check`: sample-ratio mismatch, chi-squared goodness of fit of the assignment counts
  against the configured weights; ``mismatch`` at p < 0.001.
* :func:`sample_size`: recipients per arm for a two-sided two-proportion test.
* :func:`incremental_lift`: treated against a holdout, conversion rate and revenue per contact.

Each test returns a :class:`Comparison`: statistic, p-value, the effect (treatment minus
control, absolute) and its confidence interval.

>>> a = ArmCounts("A", recipients=10_000, successes=300)
>>> b = ArmCounts("B", recipients=10_000, successes=360)
>>> r = z_test(a, b)
>>> round(r.statistic, 3), round(r.p_value, 4), round(r.effect, 4)
(2.375, 0.0175, 0.006)
>>> round(r.ci_low, 4), round(r.ci_high, 4)
(0.001, 0.011)
>>> sample_size(baseline=0.03, mde=0.10)
53211
>>> srm_check({"A": 5_000, "B": 5_400}, {"A": 50, "B": 50}).mismatch
True

The sequential (peeking-safe) test is in :mod:`tidings.analytics.sequential`, the Bayesian
probability to be best in :mod:`tidings.analytics.bayes`, and the decision rule that combines
them in :mod:`tidings.analytics.decision`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from scipy import stats as _st  # type: ignore[import-untyped]

SRM_THRESHOLD = 0.001
"""p-value under which the assignment counts are declared not to match the weights."""


@dataclass(frozen=True)
class ArmCounts:
    """What one arm of an experiment saw, as aggregates.

    ``successes`` counts recipients with at least one success for a proportion metric (unique
    human opens, unique clicks, converters). ``revenue`` and ``revenue_sq`` are the sum and the
    sum of squares of revenue per recipient (recipients without revenue count as 0), e.g.
    ``SUM(COALESCE(r, 0))`` and ``SUM(COALESCE(r, 0) * COALESCE(r, 0))`` over recipients.
    """

    name: str
    recipients: int
    successes: int = 0
    revenue: float | Decimal = 0.0
    revenue_sq: float | Decimal = 0.0

    def __post_init__(self) -> None:
        if self.recipients < 0:
            raise ValueError(f"arm {self.name}: recipients must be >= 0, got {self.recipients}")
        if not 0 <= self.successes <= self.recipients:
            raise ValueError(
                f"arm {self.name}: successes must be within 0..recipients ({self.recipients}), "
                f"got {self.successes}"
            )
        if self.revenue_sq < 0:
            raise ValueError(f"arm {self.name}: revenue_sq must be >= 0, got {self.revenue_sq}")

    @property
    def rate(self) -> float:
        """Share of recipients with a success (0 for an empty arm)."""
        return self.successes / self.recipients if self.recipients else 0.0

    @property
    def revenue_mean(self) -> float:
        """Revenue per recipient (0 for an empty arm)."""
        return float(Fraction(self.revenue) / self.recipients) if self.recipients else 0.0

    @property
    def revenue_var(self) -> float:
        """Sample variance (n - 1) of revenue per recipient, exact from the sums; needs n >= 2."""
        n = self.recipients
        if n < 2:
            raise ValueError(f"arm {self.name}: the variance needs at least 2 recipients, got {n}")
        s = Fraction(self.revenue)
        var = (Fraction(self.revenue_sq) - s * s / n) / (n - 1)
        if var < 0:  # sums that are not from one data set
            raise ValueError(f"arm {self.name}: revenue_sq < revenue**2 / n, inconsistent sums")
        return float(var)


@dataclass(frozen=True)
class Comparison:
    """One arm against the control: ``effect = treatment - control`` (absolute).

    ``p_adjusted`` is the p-value after the multiple-comparison correction (Holm) when there
    are more than two arms, else equal to ``p_value``; a decision compares it with alpha.
    ``confidence`` is the level of ``ci_low .. ci_high``. ``peeking_safe`` is True only for the
    sequential test, whose p-value and interval stay valid however often they are looked at.
    """

    test: str
    control: str
    treatment: str
    statistic: float
    p_value: float
    effect: float
    ci_low: float
    ci_high: float
    confidence: float
    control_value: float
    treatment_value: float
    p_adjusted: float
    df: float | None = None
    peeking_safe: bool = False

    @classmethod
    def of(
        cls,
        test: str,
        control: ArmCounts,
        treatment: ArmCounts,
        *,
        values: tuple[float, float],
        statistic: float,
        p_value: float,
        half_width: float,
        alpha: float,
        **extra: Any,
    ) -> Comparison:
        """A comparison with the effect ``treatment - control`` of ``values`` (control,
        treatment) and the interval ``effect +- half_width`` at level ``1 - alpha``."""
        c_val, t_val = values
        effect = t_val - c_val
        return cls(
            test=test,
            control=control.name,
            treatment=treatment.name,
            statistic=statistic,
            p_value=p_value,
            effect=effect,
            ci_low=effect - half_width,
            ci_high=effect + half_width,
            confidence=1 - alpha,
            control_value=c_val,
            treatment_value=t_val,
            p_adjusted=p_value,
            **extra,
        )

    @property
    def relative_effect(self) -> float | None:
        """``effect / control_value``, or None when the control value is 0."""
        return self.effect / self.control_value if self.control_value else None


@dataclass(frozen=True)
class ChiSquaredResult:
    """Omnibus k x 2 chi-squared test, and each challenger against ``control`` (Holm)."""

    statistic: float
    p_value: float
    dof: int
    control: str
    comparisons: tuple[Comparison, ...]


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio mismatch check: observed vs expected assignment counts."""

    statistic: float
    p_value: float
    dof: int
    observed: Mapping[str, int]
    expected: Mapping[str, float]
    threshold: float
    mismatch: bool

    @property
    def reason(self) -> str:
        """One line a marketer can read, naming the counts and the expected split."""
        seen = ", ".join(f"{k}={v}" for k, v in self.observed.items())
        want = ", ".join(f"{k}={v:.0f}" for k, v in self.expected.items())
        verdict = "sample-ratio mismatch" if self.mismatch else "assignment matches the weights"
        return (
            f"{verdict}: assigned {seen}, expected {want} "
            f"(chi-squared {self.statistic:.2f}, p={self.p_value:.2g}, threshold {self.threshold})"
        )


@dataclass(frozen=True)
class Lift:
    """Incremental lift of the treated group over the holdout."""

    conversion: Comparison
    revenue: Comparison | None


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")


def _two_sided_p_norm(z: float) -> float:
    return float(2 * _st.norm.sf(abs(z)))


def z_test(control: ArmCounts, treatment: ArmCounts, *, alpha: float = 0.05) -> Comparison:
    """Two-sided two-proportion z-test of ``treatment.rate - control.rate``.

    The statistic uses the pooled rate (the null says both rates are equal); the interval of
    the difference uses the unpooled (Wald) standard error at level ``1 - alpha``.

    >>> r = z_test(ArmCounts("A", 1000, 50), ArmCounts("B", 1000, 75))
    >>> round(r.statistic, 3), round(r.p_value, 4)
    (2.309, 0.0209)
    """
    _check_alpha(alpha)
    for arm in (control, treatment):
        if arm.recipients == 0:
            raise ValueError(f"arm {arm.name} has no recipients")
    n1, n2 = control.recipients, treatment.recipients
    p1, p2 = control.rate, treatment.rate
    diff = p2 - p1
    pooled = (control.successes + treatment.successes) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = diff / se0 if se0 > 0 else 0.0
    p = _two_sided_p_norm(z) if se0 > 0 else 1.0
    se1 = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    half = float(_st.norm.ppf(1 - alpha / 2)) * se1
    return Comparison.of(
        "two-proportion z-test",
        control,
        treatment,
        values=(p1, p2),
        statistic=z,
        p_value=p,
        half_width=half,
        alpha=alpha,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _split_control(
    arms: Sequence[ArmCounts], control: str | None
) -> tuple[ArmCounts, list[ArmCounts]]:
    names = [a.name for a in arms]
    if len(arms) < 2:
        raise ValueError(f"an experiment needs at least 2 arms, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    name = names[0] if control is None else control
    if name not in names:
        raise ValueError(f"control {name!r} is not one of the arms {names}")
    ctrl = arms[names.index(name)]
    return ctrl, [a for a in arms if a.name != name]


def adjust_vs_control(comparisons: Sequence[Comparison], *, test: str) -> tuple[Comparison, ...]:
    """Holm-adjust comparisons that share a control (no change when there is only one)."""
    if len(comparisons) == 1:
        return tuple(comparisons)
    adjusted = holm([c.p_value for c in comparisons])
    return tuple(
        Comparison(**{**c.__dict__, "p_adjusted": p, "test": test})
        for c, p in zip(comparisons, adjusted, strict=True)
    )


def chi_squared_test(
    arms: Sequence[ArmCounts], *, control: str | None = None, alpha: float = 0.05
) -> ChiSquaredResult:
    """Omnibus k x 2 chi-squared test, then every challenger against the control (Holm).

    ``control`` defaults to the first arm. Each pairwise test is the 2 x 2 chi-squared test
    without continuity correction; its p-value is Holm-adjusted over the ``k - 1`` comparisons
    and its interval (unpooled) is at the Bonferroni level ``1 - alpha / (k - 1)``.

    >>> arms = [ArmCounts("A", 2000, 100), ArmCounts("B", 2000, 140), ArmCounts("C", 2000, 104)]
    >>> r = chi_squared_test(arms)
    >>> round(r.statistic, 3), r.dof, round(r.p_value, 4)
    (8.98, 2, 0.0112)
    >>> [(c.treatment, round(c.p_adjusted, 4)) for c in r.comparisons]
    [('B', 0.0155), ('C', 0.7737)]
    """
    _check_alpha(alpha)
    ctrl, challengers = _split_control(arms, control)
    total_n = sum(a.recipients for a in arms)
    total_x = sum(a.successes for a in arms)
    stat = 0.0
    if 0 < total_x < total_n:
        for a in arms:
            if a.recipients == 0:
                continue
            for observed, col_total in (
                (a.successes, total_x),
                (a.recipients - a.successes, total_n - total_x),
            ):
                expected = a.recipients * col_total / total_n
                stat += (observed - expected) ** 2 / expected
    dof = len(arms) - 1
    p = float(_st.chi2.sf(stat, dof)) if stat > 0 else 1.0
    level = alpha / len(challengers)
    pairwise = []
    for arm in challengers:
        z = z_test(ctrl, arm, alpha=level)
        pairwise.append(
            Comparison(
                **{**z.__dict__, "statistic": z.statistic**2, "df": 1.0, "test": "chi-squared 2x2"}
            )
        )
    comparisons = adjust_vs_control(pairwise, test="chi-squared 2x2 vs control, Holm-adjusted")
    return ChiSquaredResult(
        statistic=stat, p_value=p, dof=dof, control=ctrl.name, comparisons=comparisons
    )


def welch_test(control: ArmCounts, treatment: ArmCounts, *, alpha: float = 0.05) -> Comparison:
    """Welch's t-test of revenue per recipient, ``treatment - control``, from the arm sums.

    >>> a = ArmCounts("A", 4, revenue=10, revenue_sq=50)      # values 0, 0, 5, 5
    >>> b = ArmCounts("B", 4, revenue=24, revenue_sq=156)     # values 5, 5, 5, 9
    >>> r = welch_test(a, b)
    >>> round(r.statistic, 4), round(r.df, 3), round(r.p_value, 4)
    (1.9932, 5.341, 0.0992)
    """
    _check_alpha(alpha)
    n1, n2 = control.recipients, treatment.recipients
    m1, m2 = control.revenue_mean, treatment.revenue_mean
    v1, v2 = control.revenue_var, treatment.revenue_var
    a, b = v1 / n1, v2 / n2
    se = math.sqrt(a + b)
    diff = m2 - m1
    if se > 0:
        df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
        t = diff / se
        p = float(2 * _st.t.sf(abs(t), df))
        half = float(_st.t.ppf(1 - alpha / 2, df)) * se
    else:  # both arms constant: the difference is known exactly
        df = float(n1 + n2 - 2)
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        half = 0.0
    return Comparison.of(
        "Welch t-test",
        control,
        treatment,
        values=(m1, m2),
        statistic=t,
        p_value=p,
        half_width=half,
        alpha=alpha,
        df=df,
    )


def welch_vs_control(
    arms: Sequence[ArmCounts], *, control: str | None = None, alpha: float = 0.05
) -> tuple[Comparison, ...]:
    """Welch's t-test of every challenger against the control, Holm-adjusted when k > 2.

    Intervals are at the Bonferroni level ``1 - alpha / (k - 1)``, as in
    :func:`chi_squared_test`.
    """
    ctrl, challengers = _split_control(arms, control)
    level = alpha / len(challengers)
    return adjust_vs_control(
        [welch_test(ctrl, a, alpha=level) for a in challengers],
        test="Welch t-test vs control, Holm-adjusted",
    )


def srm_check(
    assigned: Mapping[str, int],
    weights: Mapping[str, float],
    *,
    threshold: float = SRM_THRESHOLD,
) -> SrmResult:
    """Chi-squared goodness of fit of assignment counts against the configured weights.

    ``weights`` are relative (50/50, 0.2/0.8 and 1/4 all work) and must name the same arms as
    ``assigned``; include the holdout in both when there is one. A mismatch (p < ``threshold``)
    means the assignment or the counting is broken, and no result should be trusted.

    >>> r = srm_check({"A": 5_000, "B": 5_400}, {"A": 50, "B": 50})
    >>> round(r.statistic, 3), r.mismatch
    (15.385, True)
    """
    if set(assigned) != set(weights):
        raise ValueError(
            f"assigned arms {sorted(assigned)} and weighted arms {sorted(weights)} differ"
        )
    if len(assigned) < 2:
        raise ValueError("the sample-ratio check needs at least 2 arms")
    if any(w <= 0 for w in weights.values()):
        raise ValueError(f"weights must be > 0, got {dict(weights)}")
    total_w = sum(weights.values())
    total = sum(assigned.values())
    names = list(assigned)
    expected = {k: total * weights[k] / total_w for k in names}
    stat = 0.0
    if total > 0:
        stat = sum((assigned[k] - expected[k]) ** 2 / expected[k] for k in names)
    dof = len(names) - 1
    p = float(_st.chi2.sf(stat, dof)) if stat > 0 else 1.0
    return SrmResult(
        statistic=stat,
        p_value=p,
        dof=dof,
        observed=dict(assigned),
        expected=expected,
        threshold=threshold,
        mismatch=p < threshold,
    )


def sample_size(
    baseline: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    relative: bool = True,
) -> int:
    """Recipients per arm for a two-sided two-proportion z-test (equal arms).

    ``mde`` is the minimum detectable effect, relative to ``baseline`` by default (``0.10`` =
    a 10% lift, 3% -> 3.3%), absolute with ``relative=False``. The formula is the usual one with
    the pooled variance under the null and the unpooled one under the alternative (Fleiss,
    without continuity correction; statsmodels ``samplesize_proportions_2indep_onetail``)::

        n = (z(1 - alpha/2) * sqrt(2 p q) + z(power) * sqrt(p1 q1 + p2 q2))**2 / (p2 - p1)**2

    >>> sample_size(baseline=0.03, mde=0.10)
    53211
    >>> sample_size(baseline=0.10, mde=0.02, relative=False)
    3841
    """
    _check_alpha(alpha)
    if not 0 < power < 1:
        raise ValueError(f"power must be within (0, 1), got {power}")
    if not 0 < baseline < 1:
        raise ValueError(f"baseline must be within (0, 1), got {baseline}")
    p1 = baseline
    p2 = baseline * (1 + mde) if relative else baseline + mde
    if mde == 0 or not 0 < p2 < 1:
        raise ValueError(f"baseline {baseline} with mde {mde} gives a rate of {p2}")
    pbar = (p1 + p2) / 2
    z_a = float(_st.norm.ppf(1 - alpha / 2))
    z_b = float(_st.norm.ppf(power))
    root = z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root**2 / (p2 - p1) ** 2)


def incremental_lift(treated: ArmCounts, holdout: ArmCounts, *, alpha: float = 0.05) -> Lift:
    """Lift of the treated contacts over the holdout: conversion rate and revenue per contact.

    ``successes`` are converters; revenue uses Welch's test and is None when either group has
    fewer than 2 contacts.

    >>> lift = incremental_lift(
    ...     ArmCounts("treated", 9000, 450, revenue=22_500, revenue_sq=2_250_000),
    ...     ArmCounts("holdout", 1000, 35, revenue=1_400, revenue_sq=112_000),
    ... )
    >>> round(lift.conversion.effect, 3), round(lift.revenue.effect, 2)
    (0.015, 1.1)
    """
    conversion = z_test(holdout, treated, alpha=alpha)
    revenue = None
    if treated.recipients >= 2 and holdout.recipients >= 2:
        revenue = welch_test(holdout, treated, alpha=alpha)
    return Lift(conversion=conversion, revenue=revenue)

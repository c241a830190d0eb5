"""Decide an experiment: winner, inconclusive, or blocked by a sample-ratio mismatch.

:func:`decide` takes the per-arm aggregates, the metric and the rule, and returns a
:class:`Decision` whose ``reason`` is the sentence to show a marketer.

Rules (``rule=``):

``sequential`` (default)
    mSPRT (:mod:`tidings.analytics.sequential`): an always-valid p-value, so the decision may be
    taken at any look (daily, hourly) without inflating the false-winner rate. Pass the
    p-values stored at the previous look as ``previous_p_values``. More than two arms: every
    challenger against the control, Holm-adjusted (always-valid p-values are valid p-values at
    any stopping time, so Holm keeps the family-wise error at alpha).
``fixed``
    A fixed-horizon test, valid only when looked at once, at the planned sample size
    (:func:`tidings.analytics.stats.sample_size`): two-proportion z-test, chi-squared with Holm
    correction (pairwise against the control) for more than two arms, Welch's t-test for revenue.
``bayesian``
    Probability to be best (:mod:`tidings.analytics.bayes`) against a stated threshold.

A winner under ``sequential`` and ``fixed`` is a challenger that beats the control
significantly (adjusted p <= alpha); when several do, the one with the highest observed value
(the reason says so); the control wins when every challenger is significantly worse.
Anything else is inconclusive. A sample-ratio mismatch (p < 0.001, when ``weights`` are given)
blocks the decision whatever the data say.

>>> from tidings.analytics.stats import ArmCounts
>>> arms = [ArmCounts("A", 20_000, 1_000), ArmCounts("B", 20_000, 1_150)]
>>> d = decide(arms, metric="click", weights={"A": 50, "B": 50})
>>> d.outcome, d.winner, d.peeking_safe
('winner', 'B', True)
>>> print(d.reason)
B beats A on click: 5.00% -> 5.75% (+0.75 pp, 95% always-valid CI +0.05 to +1.45 pp), \
p = 0.025 <= alpha 0.05 by mSPRT (always-valid p-value, valid under continuous peeking); \
assignment matches the weights (p=1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, assert_never

from tidings.analytics import bayes, sequential
from tidings.analytics.stats import (
    ArmCounts,
    ChiSquaredResult,
    Comparison,
    SrmResult,
    adjust_vs_control,
    chi_squared_test,
    srm_check,
    welch_vs_control,
    z_test,
)

Metric = Literal["open", "click", "conversion", "revenue"]
Rule = Literal["sequential", "fixed", "bayesian"]
Outcome = Literal["winner", "inconclusive", "blocked"]


@dataclass(frozen=True)
class Decision:
    """The outcome of an experiment at one look, with the evidence behind it."""

    outcome: Outcome
    winner: str | None
    reason: str
    rule: Rule
    metric: Metric
    test: str
    peeking_safe: bool
    alpha: float
    comparisons: tuple[Comparison, ...] = ()
    probabilities: Mapping[str, float] = field(default_factory=dict)
    threshold: float | None = None
    omnibus: ChiSquaredResult | None = None
    srm: SrmResult | None = None

    @property
    def p_values(self) -> dict[str, float]:
        """Unadjusted p-value per challenger (before Holm).

        Under ``sequential`` these are the running-minimum always-valid p-values: store them and
        pass them back as ``previous_p_values`` at the next look (Holm is applied afresh to
        them at every look).
        """
        return {c.treatment: c.p_value for c in self.comparisons}


def _fmt(metric: Metric, value: float, *, signed: bool = False, suffix: bool = True) -> str:
    """5.00% for a rate, +0.75 pp for a difference of rates, 1.23 / +0.25 for revenue."""
    sign = "+" if signed else ""
    if metric == "revenue":
        return f"{value:{sign}.2f}"
    if not signed:
        return f"{100 * value:.2f}%"
    return f"{100 * value:+.2f}{' pp' if suffix else ''}"


def _describe(c: Comparison, metric: Metric, alpha: float) -> str:
    ci = "always-valid CI" if c.peeking_safe else "CI"
    lo = _fmt(metric, c.ci_low, signed=True, suffix=False)
    hi = _fmt(metric, c.ci_high, signed=True)
    return (
        f"{_fmt(metric, c.control_value)} -> {_fmt(metric, c.treatment_value)} "
        f"({_fmt(metric, c.effect, signed=True)}, {100 * c.confidence:g}% {ci} {lo} to {hi}), "
        f"p = {c.p_adjusted:.2g} {'<=' if c.p_adjusted <= alpha else '>'} alpha {alpha:g} "
        f"by {c.test}"
    )


def _frequentist(
    arms: Sequence[ArmCounts],
    *,
    metric: Metric,
    rule: Literal["sequential", "fixed"],
    control: ArmCounts,
    alpha: float,
    mixture_sd: float,
    previous: Mapping[str, float],
) -> tuple[str, tuple[Comparison, ...], ChiSquaredResult | None]:
    challengers = [a for a in arms if a.name != control.name]
    omnibus = None
    if rule == "sequential":
        level = alpha / len(challengers)
        kind = "revenue" if metric == "revenue" else "proportion"
        raw = [
            sequential.msprt_test(
                control,
                a,
                metric=kind,
                alpha=level,
                tau=mixture_sd,
                previous_p_value=previous.get(a.name, 1.0),
            )
            for a in challengers
        ]
        test = sequential.TEST_NAME
        if len(challengers) > 1:
            test = f"{test}, pairwise vs control, Holm-adjusted"
        comparisons = adjust_vs_control(raw, test=test)
    elif metric == "revenue":
        comparisons = welch_vs_control(arms, control=control.name, alpha=alpha)
        test = comparisons[0].test
    elif len(challengers) == 1:
        comparisons = (z_test(control, challengers[0], alpha=alpha),)
        test = comparisons[0].test
    else:
        omnibus = chi_squared_test(arms, control=control.name, alpha=alpha)
        comparisons = omnibus.comparisons
        test = "chi-squared with Holm correction, pairwise vs control"
    return test, comparisons, omnibus


def decide(
    arms: Sequence[ArmCounts],
    *,
    metric: Metric,
    rule: Rule = "sequential",
    control: str | None = None,
    alpha: float = 0.05,
    weights: Mapping[str, float] | None = None,
    assignments: Mapping[str, int] | None = None,
    threshold: float = bayes.DEFAULT_THRESHOLD,
    mixture_sd: float = sequential.DEFAULT_MIXTURE_SD,
    previous_p_values: Mapping[str, float] | None = None,
    seed: int = bayes.DEFAULT_SEED,
) -> Decision:
    """Winner, inconclusive or blocked, for ``arms`` (``control`` defaults to the first arm).

    ``weights`` are the configured variant weights; with them the sample-ratio check runs on
    ``assignments`` (counts per variant, holdout included when weighted) or, by default, on the
    arms' recipients. ``threshold`` applies to the Bayesian rule, ``mixture_sd`` and
    ``previous_p_values`` to the sequential one.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if not 0.5 < threshold < 1:
        raise ValueError(f"threshold must be within (0.5, 1), got {threshold}")
    names = [a.name for a in arms]
    if len(arms) < 2 or len(set(names)) != len(names):
        raise ValueError(f"an experiment needs at least 2 arms with unique names, got {names}")
    ctrl_name = names[0] if control is None else control
    if ctrl_name not in names:
        raise ValueError(f"control {ctrl_name!r} is not one of the arms {names}")
    ctrl = arms[names.index(ctrl_name)]
    base = Decision(
        outcome="inconclusive",
        winner=None,
        reason="",
        rule=rule,
        metric=metric,
        test="",
        peeking_safe=rule == "sequential",
        alpha=alpha,
        threshold=threshold if rule == "bayesian" else None,
    )

    srm_note = "sample ratio not checked (no weights given)"
    if weights is not None:
        counts = assignments if assignments is not None else {a.name: a.recipients for a in arms}
        srm = srm_check(counts, weights)
        base = replace(base, srm=srm)
        if srm.mismatch:
            reason = f"{srm.reason}; fix the assignment before deciding"
            return replace(base, outcome="blocked", reason=reason)
        srm_note = f"assignment matches the weights (p={srm.p_value:.2g})"

    minimum = 2 if metric == "revenue" else 1
    short = [a.name for a in arms if a.recipients < minimum]
    if short:
        return replace(base, reason=f"not enough recipients yet in {', '.join(short)}")

    match rule:
        case "bayesian":
            return _bayesian(base, arms, threshold=threshold, seed=seed, srm_note=srm_note)
        case "sequential" | "fixed":
            test, comparisons, omnibus = _frequentist(
                arms,
                metric=metric,
                rule=rule,
                control=ctrl,
                alpha=alpha,
                mixture_sd=mixture_sd,
                previous=previous_p_values or {},
            )
            base = replace(base, test=test, comparisons=comparisons, omnibus=omnibus)
            return _pick(base, ctrl_name, srm_note=srm_note)
        case _:
            assert_never(rule)


def _bayesian(
    base: Decision, arms: Sequence[ArmCounts], *, threshold: float, seed: int, srm_note: str
) -> Decision:
    metric = base.metric
    if metric == "revenue":
        probs = bayes.revenue_probability_to_be_best(arms, seed=seed)
        test = "Bayesian probability to be best (normal approximation of the mean)"
    else:
        probs = bayes.probability_to_be_best(arms, seed=seed)
        test = "Bayesian probability to be best (Beta-Binomial, uniform prior)"
    base = replace(base, test=test, probabilities=probs)
    best = max(probs, key=lambda k: probs[k])
    shown = ", ".join(f"{k} {v:.3f}" for k, v in probs.items())
    caveat = "a belief, not an error rate under repeated looks"
    if probs[best] >= threshold:
        reason = (
            f"{best} is best on {metric} with probability {probs[best]:.3f} >= threshold "
            f"{threshold:g} ({shown}; {caveat}); {srm_note}"
        )
        return replace(base, outcome="winner", winner=best, reason=reason)
    reason = (
        f"no arm reaches probability {threshold:g} to be best on {metric} ({shown}; "
        f"{caveat}); {srm_note}"
    )
    return replace(base, reason=reason)


def _pick(base: Decision, ctrl_name: str, *, srm_note: str) -> Decision:
    metric, alpha, comparisons = base.metric, base.alpha, base.comparisons
    better = [c for c in comparisons if c.p_adjusted <= alpha and c.effect > 0]
    if better:
        top = max(better, key=lambda c: c.treatment_value)
        reason = f"{top.treatment} beats {ctrl_name} on {metric}: {_describe(top, metric, alpha)}"
        if len(better) > 1:
            others = ", ".join(c.treatment for c in better if c is not top)
            reason += f"; {others} also beat {ctrl_name}, {top.treatment} has the highest value"
        return replace(base, outcome="winner", winner=top.treatment, reason=f"{reason}; {srm_note}")
    if all(c.p_adjusted <= alpha and c.effect < 0 for c in comparisons):
        worst = max(comparisons, key=lambda c: c.p_adjusted)
        reason = (
            f"{ctrl_name} beats every challenger on {metric}; weakest evidence, against "
            f"{worst.treatment}: {_describe(worst, metric, alpha)}; {srm_note}"
        )
        return replace(base, outcome="winner", winner=ctrl_name, reason=reason)
    closest = min(comparisons, key=lambda c: c.p_adjusted)
    reason = (
        f"no arm differs from {ctrl_name} on {metric} at alpha {alpha:g}; closest, "
        f"{closest.treatment}: {_describe(closest, metric, alpha)}; {srm_note}"
    )
    return replace(base, reason=reason)

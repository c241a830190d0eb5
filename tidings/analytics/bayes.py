"""Bayesian probability that each arm is the best.

Proportions use the Beta-Binomial model: with a ``Beta(a, b)`` prior (uniform ``(1, 1)`` by
default), an arm with ``x`` successes out of ``n`` has the posterior
``Beta(a + x, b + n - x)``. For two arms the probability that one beats the other is exact
(Evan Miller's closed form, a finite sum of Beta functions); for more arms it is a Monte Carlo
estimate from a fixed seed, so the same counts always give the same answer (standard error at
most ``0.5 / sqrt(draws)``, 0.0016 at the default 100,000 draws).

Revenue per recipient uses the normal approximation of each arm's mean,
``N(mean, variance / n)`` (large samples; flat prior), by Monte Carlo.

A winner is declared when its probability reaches a stated threshold
(:data:`DEFAULT_THRESHOLD`, 0.95). This is a statement about belief given the prior, not an
error rate: looked at daily, it declares false winners in an A/A test more often than
``1 - threshold``; the peeking-safe default is :mod:`tidings.analytics.sequential`.

>>> from tidings.analytics.stats import ArmCounts
>>> probs = probability_to_be_best([ArmCounts("A", 1000, 50), ArmCounts("B", 1000, 70)])
>>> {k: round(v, 4) for k, v in probs.items()}
{'A': 0.0301, 'B': 0.9699}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import betaln, logsumexp  # type: ignore[import-untyped]

from tidings.analytics.stats import ArmCounts

DEFAULT_THRESHOLD = 0.95
DEFAULT_DRAWS = 100_000
DEFAULT_SEED = 20_170_813  # any fixed value: the estimate must not change between runs


def prob_beta_greater(a1: int, b1: int, a2: int, b2: int) -> float:
    """Exact ``P(X2 > X1)`` for independent ``X1 ~ Beta(a1, b1)``, ``X2 ~ Beta(a2, b2)``.

    Needs integer ``a`` parameters (integer prior plus counts). The sum runs over the smaller
    of ``a1`` and ``a2`` terms.

    >>> round(prob_beta_greater(1, 1, 2, 1), 4)    # uniform vs Beta(2, 1)
    0.6667
    """
    for v in (a1, b1, a2, b2):
        if v <= 0:
            raise ValueError(f"Beta parameters must be > 0, got {(a1, b1, a2, b2)}")
    if a2 > a1:
        return 1.0 - prob_beta_greater(a2, b2, a1, b1)
    i = np.arange(a2, dtype=np.float64)
    terms = betaln(a1 + i, b1 + b2) - np.log(b2 + i) - betaln(1 + i, b2) - betaln(a1, b1)
    return float(min(1.0, max(0.0, math.exp(float(logsumexp(terms))))))


def probability_to_be_best(
    arms: Sequence[ArmCounts],
    *,
    prior: tuple[int, int] = (1, 1),
    draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
) -> dict[str, float]:
    """Posterior probability that each arm has the highest rate (Beta-Binomial).

    Exact for two arms; Monte Carlo (``draws``, ``seed``) for more. The values sum to 1.
    """
    if len(arms) < 2:
        raise ValueError("the probability to be best needs at least 2 arms")
    pa, pb = prior
    if pa <= 0 or pb <= 0:
        raise ValueError(f"the Beta prior must be positive integers, got {prior}")
    alpha = [pa + a.successes for a in arms]
    beta = [pb + a.recipients - a.successes for a in arms]
    if len(arms) == 2:
        p_second = prob_beta_greater(alpha[0], beta[0], alpha[1], beta[1])
        return {arms[0].name: 1.0 - p_second, arms[1].name: p_second}
    rng = np.random.default_rng(seed)
    samples = rng.beta(np.asarray(alpha, float), np.asarray(beta, float), size=(draws, len(arms)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(arms))
    return {a.name: float(w) / draws for a, w in zip(arms, wins, strict=True)}


def revenue_probability_to_be_best(
    arms: Sequence[ArmCounts],
    *,
    draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
) -> dict[str, float]:
    """Probability that each arm has the highest revenue per recipient (normal approximation).

    Each arm's mean is ``N(mean, variance / n)``; needs at least 2 recipients per arm.
    """
    if len(arms) < 2:
        raise ValueError("the probability to be best needs at least 2 arms")
    means = np.asarray([a.revenue_mean for a in arms])
    sds = np.sqrt(np.asarray([a.revenue_var / a.recipients for a in arms]))
    rng = np.random.default_rng(seed)
    samples = means + sds * rng.standard_normal(size=(draws, len(arms)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(arms))
    return {a.name: float(w) / draws for a, w in zip(arms, wins, strict=True)}

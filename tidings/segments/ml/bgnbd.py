"""The BG/NBD (beta-geometric / negative binomial) repeat-purchase model, fitted by max. likelihood.

The model of Fader, Hardie & Lee (2005), "Counting your customers the easy way": while alive, a
customer buys at Poisson rate ``lambda``; after each repeat purchase they drop out with
probability ``p``; across customers ``lambda ~ Gamma(r, alpha)`` (shape, rate) and
``p ~ Beta(a, b)``. Each customer is summarised as of a cut-off by

* ``x``: repeat purchases (purchase days after the first one),
* ``t_x``: time from the first to the last purchase (0 when ``x == 0``),
* ``T``: time from the first purchase to the cut-off,

all times in days here. :func:`fit` maximises the likelihood (paper eq. 6) over
``log(r, alpha, a, b)`` with L-BFGS-B; :meth:`BgNbd.expected_purchases` is the conditional
expectation of purchases in the next ``t`` days (eq. 10) for any horizon, and
:meth:`BgNbd.p_alive` the probability that the customer has not dropped out.

>>> model = fit(x, t_x, T)                                          # doctest: +SKIP
>>> model.expected_purchases(273.0, x, t_x, T)                      # doctest: +SKIP
array([0.14, 2.91, ...])

:func:`simulate` draws customers from the model (used by the tests to check that :func:`fit`
recovers known parameters and that the expectation matches a Monte-Carlo average).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize  # type: ignore[import-untyped]
from scipy.special import betaincinv, gammaln, hyp2f1  # type: ignore[import-untyped]

Floats = NDArray[np.float64]

#: ``log(r), log(alpha / unit), log(a), log(b)`` stay within these bounds while fitting; a
#: parameter at a bound means the data does not pin it down (``BgNbd.at_bound``).
LOG_BOUND = 12.0


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters (``alpha`` in days) and how the fit went."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")  # summed over the customers fitted
    customers: int = 0
    converged: bool = True
    at_bound: bool = False

    def expected_purchases(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
        """E[purchases in (T, T + t] | x, t_x, T]: paper eq. 10, after Euler's transformation.

        With ``z = t / (alpha + T + t)``, eq. 10's ``(1 - z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z)``
        equals ``(1 - z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z)``: small numerator parameters, so
        it stays accurate for heavy buyers over long horizons (there the printed form multiplies
        a power near 1e-300 by a 2F1 near 1e+300, and scipy returns NaN for Pfaff's form). Where
        it still fails (``a`` in the hundreds or more, when the data shows no spread in dropout),
        the same expectation is integrated numerically (:meth:`_alive_part_by_quadrature`).
        """
        if t < 0:
            raise ValueError(f"horizon t must be >= 0, got {t}")
        xs, txs, ts = _checked(x, t_x, T)
        a = _away_from_one(self.a)
        c = a + self.b + xs - 1.0
        z = t / (self.alpha + ts + t)
        with np.errstate(all="ignore"):
            scaled = np.exp((a - 1.0) * np.log1p(-z))
            decay = scaled * hyp2f1(a + self.b - 1.0 - self.r, a - 1.0, c, z)
            alive_part = c / (a - 1.0) * (1.0 - decay)
        # 0 <= E[purchases | alive] <= (r + x) t / (alpha + T) (the rate's posterior mean times t).
        ceiling = (self.r + xs) * t / (self.alpha + ts)
        bad = ~np.isfinite(alive_part) | (alive_part < -1e-9) | (alive_part > ceiling * 1.000001)
        if bad.any():
            alive_part[bad] = self._alive_part_by_quadrature(t, xs[bad], ts[bad])
        alive_part = np.clip(alive_part, 0.0, ceiling)
        return np.asarray(alive_part * self.p_alive(xs, txs, ts), np.float64)

    def _alive_part_by_quadrature(self, t: float, x: Floats, T: Floats) -> Floats:
        """E[purchases in the next t | alive], integrated over p's posterior ``Beta(a, b + x)``:

        ``E_p[(1 - ((alpha + T) / (alpha + T + p t))^(r + x)) / p]`` by Gauss-Legendre on the
        posterior's quantiles (64 nodes).
        """
        nodes, weights = np.polynomial.legendre.leggauss(64)
        u, w = (nodes + 1.0) / 2.0, weights / 2.0
        out = np.empty(len(x))
        for value in np.unique(x):
            rows = x == value
            p = betaincinv(self.a, self.b + value, u)
            s = t / (self.alpha + T[rows])
            shape = self.r + value
            with np.errstate(divide="ignore", invalid="ignore"):
                g = -np.expm1(-shape * np.log1p(np.outer(s, p))) / p
            g = np.where(p > 0, g, shape * s[:, None])  # the limit as p -> 0
            out[rows] = g @ w
        return out

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
        """P(not dropped out by T | x, t_x, T); 1 for customers without a repeat purchase."""
        xs, txs, ts = _checked(x, t_x, T)
        shape = self.r + xs
        # a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x), only where x > 0.
        log_odds = (
            np.log(self.a)
            - np.log(np.maximum(self.b + xs - 1.0, 1e-300))
            + shape * (np.log(self.alpha + ts) - np.log(self.alpha + txs))
        )
        odds = np.where(xs > 0, np.exp(np.minimum(log_odds, 700.0)), 0.0)
        return np.asarray(1.0 / (1.0 + odds), np.float64)

    def expected_purchases_new(self, t: float) -> float:
        """E[repeat purchases in (0, t]] for a customer who has just made a first purchase."""
        return float(self.expected_purchases(t, [0.0], [0.0], [0.0])[0])


def _away_from_one(a: float) -> float:
    # Eq. 10 is 0/0 at a == 1 (its limit is finite); a fitted a that close is nudged aside.
    return a if abs(a - 1.0) > 1e-7 else 1.0 + np.copysign(1e-7, a - 1.0)


def _checked(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[Floats, Floats, Floats]:
    xs, txs, ts = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    if not xs.shape == txs.shape == ts.shape or xs.ndim != 1:
        raise ValueError(
            f"x, t_x and T must be 1-d and of one length, got {xs.shape}, {txs.shape}, {ts.shape}"
        )
    if not (np.isfinite(xs).all() and np.isfinite(txs).all() and np.isfinite(ts).all()):
        raise ValueError("x, t_x and T must be finite (customers without a purchase have none)")
    if (xs < 0).any() or (xs != np.round(xs)).any():
        raise ValueError("x (repeat purchases) must be whole numbers >= 0")
    if (txs < 0).any() or (txs > ts + 1e-9).any():
        raise ValueError("need 0 <= t_x <= T for every customer")
    if (txs[xs == 0] != 0).any():
        raise ValueError("t_x must be 0 for customers without a repeat purchase (x == 0)")
    return xs, txs, ts


def log_likelihood(
    r: float, alpha: float, a: float, b: float, x: Floats, t_x: Floats, T: Floats
) -> Floats:
    """Per-customer log-likelihood (paper eq. 6), vectorised over the customers."""
    shape = r + x
    log_a1 = gammaln(shape) - gammaln(r) + r * np.log(alpha)
    log_a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    log_a3 = -shape * np.log(alpha + T)
    repeat = x > 0
    log_a4 = np.full_like(x, -np.inf)
    log_a4[repeat] = (
        np.log(a) - np.log(b + x[repeat] - 1.0) - shape[repeat] * np.log(alpha + t_x[repeat])
    )
    return np.asarray(log_a1 + log_a2 + np.logaddexp(log_a3, log_a4), np.float64)


GRADIENT_TOLERANCE = 1e-3
"""Largest projected gradient (mean log-likelihood per log-parameter) of a converged fit."""


def _projected_gradient(objective: Callable[[Floats], float], theta: Floats, bound: float) -> float:
    """Max |gradient| at ``theta`` by central differences, leaving out the components that push
    against a bound the parameter sits at (a flat direction: e.g. no dropout, b -> infinity)."""
    step = 1e-6
    gradient = np.empty_like(theta)
    for i in range(len(theta)):
        up, down = theta.copy(), theta.copy()
        up[i] += step
        down[i] -= step
        gradient[i] = (objective(up) - objective(down)) / (2 * step)
    at_upper = (theta > bound - 1e-3) & (gradient < 0)
    at_lower = (theta < -bound + 1e-3) & (gradient > 0)
    gradient[at_upper | at_lower] = 0.0
    return float(np.max(np.abs(gradient)))


def fit(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters for customers ``(x, t_x, T)`` (times in days).

    Identical summaries are fitted once with a weight. Raises ``ValueError`` when nobody has
    a repeat purchase (then ``p`` and ``lambda`` cannot be told apart).
    """
    xs, txs, ts = _checked(x, t_x, T)
    if not (xs > 0).any():
        raise ValueError(
            f"BG/NBD needs customers with repeat purchases: none among {len(xs)} customers"
        )
    rows, counts = np.unique(np.column_stack([xs, txs, ts]), axis=0, return_counts=True)
    ux, utx, ut = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()
    weight = counts.astype(np.float64) / counts.sum()
    # Times in units of the mean age, so that every log-parameter starts near 0.
    unit = float(ts.mean()) if ts.mean() > 0 else 1.0
    utx, ut = utx / unit, ut / unit

    def objective(theta: Floats) -> float:
        r, alpha, a, b = np.exp(theta)
        value = -float(weight @ log_likelihood(r, alpha, a, b, ux, utx, ut))
        return value if np.isfinite(value) else 1e300

    bounds = [(-LOG_BOUND, LOG_BOUND)] * 4
    tight = {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000}
    result = minimize(objective, np.zeros(4), method="L-BFGS-B", bounds=bounds, options=tight)
    if not result.success:  # a rough start: polish with the derivative-free simplex
        result = minimize(
            objective,
            result.x,
            method="Nelder-Mead",
            bounds=bounds,
            options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 4000},
        )
    theta = np.asarray(result.x, dtype=np.float64)
    stationary = _projected_gradient(objective, theta, LOG_BOUND) < GRADIENT_TOLERANCE
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    alpha *= unit
    return BgNbd(
        r=r,
        alpha=alpha,
        a=a,
        b=b,
        log_likelihood=float(log_likelihood(r, alpha, a, b, xs, txs, ts).sum()),
        customers=len(xs),
        # The optimisers' own flags are noise at this precision: L-BFGS-B stops "ABNORMAL" when
        # its line search cannot improve in the last digits, differently on another CPU or BLAS.
        # A fit is converged when it is a stationary point (bounds allowed for).
        converged=bool(result.success or stationary),
        at_bound=bool((np.abs(theta) > LOG_BOUND - 1e-3).any()),
    )


def simulate(
    model: BgNbd, T: ArrayLike, *, horizon: float = 0.0, seed: int = 0
) -> tuple[Floats, Floats, Floats, Floats]:
    """Draw one customer per entry of ``T``: ``(x, t_x, T, purchases in (T, T + horizon])``.

    Exact draws, vectorised: a customer makes ``K ~ Geometric(p)`` repeat purchases before
    dropping out, at the event times of a Poisson process of rate ``lambda``; given ``n`` events
    in ``(0, T]``, the ``m``-th of them is at ``T * Beta(m, n - m + 1)``.
    """
    ts = np.asarray(T, dtype=np.float64)
    if ts.ndim != 1 or (ts < 0).any():
        raise ValueError("T must be a 1-d array of ages >= 0")
    rng = np.random.default_rng(seed)
    n = len(ts)
    lam = rng.gamma(model.r, 1.0 / model.alpha, size=n)
    p = np.clip(rng.beta(model.a, model.b, size=n), 1e-12, 1.0)
    dropout_after = rng.geometric(p)
    events = rng.poisson(lam * ts)
    x = np.minimum(events, dropout_after)
    last = rng.beta(np.maximum(x, 1), np.maximum(events - x + 1, 1))
    t_x = np.where(x > 0, ts * last, 0.0)
    later = rng.poisson(lam * horizon)
    future = np.minimum(later, np.maximum(dropout_after - events, 0))
    return x.astype(np.float64), t_x, ts.copy(), future.astype(np.float64)

"""BG/NBD: maximum likelihood recovers simulated parameters; the expectation is checked against a
Monte-Carlo simulation of the model and against a numerical integral (an independent route)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad  # type: ignore[import-untyped]
from scipy.special import betaln  # type: ignore[import-untyped]
from scipy.stats import beta as beta_dist  # type: ignore[import-untyped]

from tidings.segments.ml.bgnbd import BgNbd, fit, log_likelihood, simulate

TRUE = BgNbd(r=0.5, alpha=20.0, a=0.8, b=2.5)


def test_fit_recovers_known_parameters() -> None:
    ages = np.random.default_rng(7).uniform(180, 720, 20_000)
    x, t_x, age, _ = simulate(TRUE, ages, seed=11)
    # Whole days, as the store gives them (t_x rounded down can only shrink, so t_x <= T holds).
    model = fit(x, np.floor(t_x), np.floor(age))
    assert model.converged and not model.at_bound and model.customers == 20_000
    for name in ("r", "alpha", "a", "b"):
        estimate, truth = getattr(model, name), getattr(TRUE, name)
        assert abs(estimate / truth - 1) < 0.15, (name, estimate, truth)
    # It is a maximum: nudging any parameter lowers the likelihood.
    best = model.log_likelihood
    for i in range(4):
        r, alpha, a, b = (v * (1.05 if j == i else 1.0) for j, v in enumerate(params(model)))
        worse = log_likelihood(r, alpha, a, b, x, np.floor(t_x), np.floor(age)).sum()
        assert worse < best


def test_convergence_is_judged_by_the_fit_not_the_optimisers_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """L-BFGS-B ends "ABNORMAL" when its line search cannot gain in the last digits, and where
    that happens differs between CPUs and BLAS builds (it made main red on another machine). A
    stationary point is a converged fit whatever the flags say; a point that is not is not."""
    from scipy.optimize import OptimizeResult  # type: ignore[import-untyped]

    from tidings.segments.ml import bgnbd

    ages = np.random.default_rng(7).uniform(180, 720, 5_000)
    x, t_x, age, _ = simulate(TRUE, ages, seed=11)
    real = bgnbd.minimize  # type: ignore[attr-defined]

    def flags_say_failure(*args, **kwargs):
        result = real(*args, **kwargs)
        return OptimizeResult(x=result.x, fun=result.fun, success=False, message="ABNORMAL")

    monkeypatch.setattr(bgnbd, "minimize", flags_say_failure)
    assert fit(x, np.floor(t_x), np.floor(age)).converged

    def stuck_at_the_start(fun, x0, **kwargs):
        return OptimizeResult(x=x0, fun=fun(x0), success=False, message="ABNORMAL")

    monkeypatch.setattr(bgnbd, "minimize", stuck_at_the_start)
    assert not fit(x, np.floor(t_x), np.floor(age)).converged


def params(model: BgNbd) -> tuple[float, float, float, float]:
    return model.r, model.alpha, model.a, model.b


def test_expectation_matches_monte_carlo() -> None:
    """Averaged over customers selected by what was observed (x, t_x, T), the conditional
    expectation must equal the purchases the simulated customers actually made afterwards."""
    horizon = 180.0
    ages = np.random.default_rng(3).uniform(30, 365, 400_000)
    x, t_x, age, future = simulate(TRUE, ages, horizon=horizon, seed=5)
    predicted = TRUE.expected_purchases(horizon, x, t_x, age)
    alive = TRUE.p_alive(x, t_x, age)
    stale = (x > 0) & (t_x < 0.5 * age)
    groups = {
        "no repeat": x == 0,
        "one repeat": x == 1,
        "2-4 repeats": (x >= 2) & (x <= 4),
        "5+ repeats": x >= 5,
        "repeat buyer, last purchase in the first half": stale,
        "repeat buyer, last purchase in the second half": (x > 0) & ~stale,
    }
    for name, rows in groups.items():
        assert rows.sum() > 5_000, name
        residual = future[rows] - predicted[rows]
        error = residual.std() / np.sqrt(rows.sum())
        assert abs(residual.mean()) < 4 * error + 0.002, (name, residual.mean(), error)
    # The stale group is where P(alive) matters: leaving it out would miss by far.
    assert alive[stale].mean() < 0.8
    assert (predicted[stale] / alive[stale]).mean() - future[stale].mean() > 0.2


def test_new_customer_expectation_matches_monte_carlo() -> None:
    _, _, _, future = simulate(TRUE, np.zeros(300_000), horizon=90.0, seed=9)
    error = future.std() / np.sqrt(len(future))
    assert abs(TRUE.expected_purchases_new(90.0) - future.mean()) < 4 * error


def _integral(model: BgNbd, t: float, x: float, t_x: float, age: float) -> float:
    """P(alive) * E_p[(1 - ((alpha+T) / (alpha+T+p t))^(r+x)) / p], p ~ Beta(a, b+x): the
    expectation integrated over the posterior of (lambda, p) instead of eq. 10."""
    a, b, r, alpha = model.a, model.b + x, model.r + x, model.alpha + age

    def integrand(p: float) -> float:  # times the Beta weight p^(a-1) (1-p)^(b-1), below
        if p == 0:
            return r * t / alpha  # the limit
        return float(-np.expm1(-r * np.log1p(p * t / alpha)) / p)

    weighted = quad(integrand, 0, 1, weight="alg", wvar=(a - 1, b - 1), epsrel=1e-11)[0]
    value = weighted / np.exp(betaln(a, b))
    return float(value * model.p_alive([x], [t_x], [age])[0])


@pytest.mark.parametrize(
    "model",
    [
        BgNbd(r=0.25, alpha=33.5, a=0.72, b=2.16),  # CDNOW-like, a < 1
        BgNbd(r=2.0, alpha=5.0, a=3.0, b=1.5),
        BgNbd(r=0.5, alpha=100.0, a=0.2, b=0.5),
        BgNbd(r=1.0, alpha=10.0, a=1.0, b=2.0),  # a == 1: eq. 10 is 0/0 there
    ],
)
def test_expectation_matches_the_integral(model: BgNbd) -> None:
    cases = [(0, 0, 0), (0, 0, 200), (1, 30, 200), (5, 150, 260), (40, 250, 260), (300, 280, 290)]
    for x, t_x, age in cases:
        for t in (1.0, 60.0, 273.0, 2000.0):
            ours = model.expected_purchases(t, [x], [t_x], [age])[0]
            assert ours == pytest.approx(_integral(model, t, x, t_x, age), rel=1e-5, abs=1e-12)


def _concentrated(model: BgNbd, t: float, x: float, t_x: float, age: float) -> float:
    """The expectation integrated with quad over mean +- 12 sd of p's posterior Beta."""
    a, b = model.a, model.b + x
    mean = a / (a + b)
    sd = np.sqrt(mean * (1 - mean) / (a + b + 1))
    shape, scale = model.r + x, model.alpha + age

    def integrand(p: float) -> float:
        gain = -np.expm1(-shape * np.log1p(p * t / scale)) / p
        return float(gain * beta_dist.pdf(p, a, b))

    value = quad(integrand, mean - 12 * sd, mean + 12 * sd, epsrel=1e-10)[0]
    return float(value * model.p_alive([x], [t_x], [age])[0])


def test_expectation_when_dropout_has_no_spread() -> None:
    """Data without dropout spread sends a and b to the hundreds of thousands; there eq. 10
    overflows and the expectation is integrated numerically instead: still right."""
    model = BgNbd(r=0.87, alpha=14.6, a=4424.7, b=162673.9)
    x, t_x, age = np.array([0.0, 3, 27, 27]), np.array([0.0, 100, 260, 200]), np.full(4, 271.0)
    for t in (90.0, 270.0, 2000.0):
        ours = model.expected_purchases(t, x, t_x, age)
        for i in range(4):
            truth = _concentrated(model, t, x[i], t_x[i], age[i])
            assert ours[i] == pytest.approx(truth, rel=1e-5)
    # No dropout at all (p ~ 0): the expectation is the posterior rate times t.
    never = BgNbd(r=8.0, alpha=117.7, a=6e-6, b=162754.8)
    ours = never.expected_purchases(90.0, x, t_x, age)
    assert ours == pytest.approx((8.0 + x) * 90.0 / (117.7 + age), rel=1e-3)


def test_p_alive_and_horizon_behave() -> None:
    model = BgNbd(r=0.25, alpha=33.5, a=0.72, b=2.16)
    assert model.p_alive([0], [0], [300]).tolist() == [1.0]
    alive = model.p_alive([3, 3, 3], [290, 150, 20], [300, 300, 300])
    assert alive[0] > alive[1] > alive[2] > 0
    horizons = [model.expected_purchases(t, [3], [150], [300])[0] for t in (0, 30, 90, 365)]
    assert horizons[0] == 0 and horizons == sorted(horizons)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="repeat purchases: none among 2"):
        fit([0, 0], [0, 0], [10, 20])
    with pytest.raises(ValueError, match="0 <= t_x <= T"):
        fit([1, 2], [5, 30], [10, 20])
    with pytest.raises(ValueError, match="t_x must be 0"):
        fit([0, 2], [3, 5], [10, 20])
    with pytest.raises(ValueError, match="whole numbers"):
        fit([0.5, 2], [0, 5], [10, 20])
    with pytest.raises(ValueError, match="one length"):
        TRUE.p_alive([1, 2], [1], [3, 4])
    with pytest.raises(ValueError, match="finite"):
        TRUE.p_alive([float("nan")], [0], [3])
    with pytest.raises(ValueError, match="horizon"):
        TRUE.expected_purchases(-1.0, [1], [1], [3])

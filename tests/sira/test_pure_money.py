"""sira.money against numpy, a bootstrap and OLS on raw per-user arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm

from sira.money import (
    Estimate,
    PairStats,
    cap_value,
    cuped,
    cuped_theta,
    mean_estimate,
    ratio_estimate,
    ratio_uplift,
    relative_change,
)


def _users(rng: np.random.Generator, n: int, rate: float = 0.2, mu: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (revenue, converted): some users buy several times."""
    orders = rng.binomial(3, rate / 3 * 1.2, size=n) * (rng.random(n) < 0.9)
    revenue = np.array([rng.lognormal(mu, 0.8, size=k).sum() for k in orders])
    return revenue, (orders > 0).astype(float)


def test_pair_stats_match_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(size=500)
    stats = PairStats.from_arrays(a, b)
    assert stats.mean_a == pytest.approx(a.mean()) and stats.mean_b == pytest.approx(b.mean())
    assert stats.var_a == pytest.approx(a.var(ddof=1)) and stats.var_b == pytest.approx(b.var(ddof=1))
    assert stats.cov_ab == pytest.approx(np.cov(a, b)[0, 1])
    half = PairStats.from_arrays(a[:200], b[:200]) + PairStats.from_arrays(a[200:], b[200:])
    assert half.sum_ab == pytest.approx(stats.sum_ab) and half.n == 500


def test_delta_method_ratio_interval_matches_a_bootstrap():
    rng = np.random.default_rng(7)
    revenue, converted = _users(rng, 4000)
    estimate = ratio_estimate(PairStats.from_arrays(revenue, converted))
    assert estimate.estimate == pytest.approx(revenue.sum() / converted.sum())
    boot = np.random.default_rng(8)
    draws = []
    for _ in range(2000):
        pick = boot.integers(0, revenue.size, revenue.size)
        draws.append(revenue[pick].sum() / converted[pick].sum())
    bootstrap_se = np.std(draws, ddof=1)
    delta_se = math.sqrt(estimate.variance)
    assert delta_se == pytest.approx(bootstrap_se, rel=0.08)
    assert (estimate.upper - estimate.lower) / 2 == pytest.approx(1.959964 * delta_se)


def test_ratio_uplift_matches_a_bootstrap_of_both_arms():
    rng = np.random.default_rng(11)
    control, variant = _users(rng, 3000), _users(rng, 3000, mu=3.1)
    uplift = ratio_uplift(PairStats.from_arrays(*control), PairStats.from_arrays(*variant))
    boot = np.random.default_rng(12)
    draws = []
    for _ in range(1500):
        c = boot.integers(0, 3000, 3000)
        v = boot.integers(0, 3000, 3000)
        draws.append((variant[0][v].sum() / variant[1][v].sum()) / (control[0][c].sum() / control[1][c].sum()) - 1)
    assert math.sqrt(uplift.variance) == pytest.approx(np.std(draws, ddof=1), rel=0.1)
    assert uplift.estimate == pytest.approx(
        (variant[0].sum() / variant[1].sum()) / (control[0].sum() / control[1].sum()) - 1
    )


def test_degenerate_ratios_carry_a_message():
    assert ratio_estimate(PairStats(0, 0, 0, 0, 0, 0)).estimate is None
    zero_denominator = ratio_estimate(PairStats.from_arrays([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]))
    assert zero_denominator.estimate is None and "denominator" in zero_denominator.message
    control_zero = relative_change(Estimate(0.0, 0.0, 0.0, "", 0.0), Estimate(1.0, 0.5, 1.5, "", 0.1))
    assert control_zero.estimate is None and "zero" in control_zero.message
    assert mean_estimate(PairStats(1, 5.0, 25.0, 0, 0, 0)).lower is None


def test_cuped_matches_ols_on_raw_arrays():
    rng = np.random.default_rng(3)
    n = 5000
    x = rng.normal(50, 10, size=2 * n)
    treated = np.repeat([0.0, 1.0], n)
    y = 5 + 0.7 * (x - 50) + rng.normal(0, 7, size=2 * n) + 0.5 * treated
    arms = [PairStats.from_arrays(y[:n], x[:n]), PairStats.from_arrays(y[n:], x[n:])]
    theta = cuped_theta(arms)
    # θ is the pooled OLS slope of y on x.
    slope = sm.OLS(y, sm.add_constant(x)).fit().params[1]
    assert theta == pytest.approx(slope, rel=1e-9)
    pooled_x = x.mean()
    results = [cuped(arm, theta, pooled_x) for arm in arms]
    for result, part in zip(results, (slice(0, n), slice(n, 2 * n))):
        adjusted = y[part] - theta * (x[part] - pooled_x)
        assert result.adjusted.estimate == pytest.approx(adjusted.mean(), rel=1e-9)
        assert result.adjusted.variance == pytest.approx(adjusted.var(ddof=1) / n, rel=1e-9)
        assert result.variance_reduction == pytest.approx(1 - adjusted.var(ddof=1) / y[part].var(ddof=1), rel=1e-9)
    # The adjusted difference is the ANCOVA treatment effect, to within the slope's pooled/within difference.
    ancova = sm.OLS(y, sm.add_constant(np.column_stack([treated, x]))).fit()
    difference = results[1].adjusted.estimate - results[0].adjusted.estimate
    assert difference == pytest.approx(ancova.params[1], abs=0.02)
    assert math.sqrt(results[0].adjusted.variance + results[1].adjusted.variance) == pytest.approx(ancova.bse[1], rel=0.02)
    # ρ ≈ 0.7 here: the variance removed is ≈ ρ².
    rho = np.corrcoef(x, y)[0, 1]
    assert results[0].variance_reduction == pytest.approx(rho**2, abs=0.03)


def test_cuped_without_a_varying_covariate_changes_nothing():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    arm = PairStats.from_arrays(y, np.zeros(4))
    assert cuped_theta([arm]) == 0.0
    result = cuped(arm, 0.0, 0.0)
    assert result.adjusted.estimate == pytest.approx(2.5) and result.variance_reduction == pytest.approx(0.0)


def test_cap_value_is_the_percentile_of_positive_values():
    values = np.array([0.0] * 50 + list(range(1, 101)), dtype=float)
    assert cap_value(values, 99.5) == pytest.approx(np.percentile(np.arange(1, 101), 99.5))
    assert cap_value(values, None) is None
    assert cap_value(np.zeros(3), 99.0) is None
    with pytest.raises(ValueError):
        cap_value(values, 100.0)

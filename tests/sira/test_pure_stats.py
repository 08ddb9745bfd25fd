"""sira.stats checked against statsmodels, scipy and numpy on raw per-user arrays."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    power_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
)

from sira.srm import srm_test
from sira.stats import (
    Interval,
    ProportionStats,
    SampleStats,
    beta_credible_interval,
    d7_retention,
    mean_interval,
    relative_uplift,
    required_sample_size,
    wilson_interval,
)


def sample_stats(values) -> SampleStats:
    values = np.asarray(values, dtype=float)
    return SampleStats(len(values), float(values.sum()), float((values**2).sum()))


# --- sufficient statistics -------------------------------------------------------------


def test_proportion_stats_properties_and_pooling():
    a, b = ProportionStats(100, 7), ProportionStats(50, 3)
    assert a.failures == 93
    assert a.rate == pytest.approx(0.07)
    assert a + b == ProportionStats(150, 10)
    assert ProportionStats(0, 0).rate == 0.0


@pytest.mark.parametrize("users, successes", [(-1, 0), (5, 6), (5, -1)])
def test_proportion_stats_rejects_impossible_counts(users, successes):
    with pytest.raises(ValueError):
        ProportionStats(users, successes)


def test_sample_stats_match_numpy_and_pool():
    rng = np.random.default_rng(1)
    first, second = rng.exponential(20.0, 300), rng.exponential(25.0, 200)
    pooled = sample_stats(first) + sample_stats(second)
    both = np.concatenate([first, second])
    assert pooled.n == 500
    assert pooled.mean == pytest.approx(both.mean())
    assert pooled.variance == pytest.approx(both.var(ddof=1))


def test_sample_stats_degenerate():
    assert SampleStats(0, 0.0, 0.0).mean == 0.0
    assert SampleStats(1, 5.0, 25.0).variance == 0.0
    # Equal values: cancellation must not produce a negative variance.
    assert sample_stats([0.1] * 1000).variance >= 0.0


# --- intervals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "successes, n", [(0, 10), (1, 10), (85, 1000), (847, 10000), (10, 10), (3, 7), (500, 1000)]
)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(successes, n, confidence):
    lower, upper = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    interval = wilson_interval(successes, n, confidence)
    assert interval.lower == pytest.approx(lower, abs=1e-12)
    assert interval.upper == pytest.approx(upper, abs=1e-12)


def test_wilson_no_users_is_the_whole_range():
    assert wilson_interval(0, 0) == Interval(0.0, 1.0, "no users yet")


@pytest.mark.parametrize("successes, n", [(0, 0), (0, 50), (50, 50), (85, 1000), (12345, 100000)])
def test_beta_interval_matches_scipy(successes, n):
    expected = scipy_stats.beta.ppf([0.025, 0.975], successes + 1, n - successes + 1)
    interval = beta_credible_interval(successes, n)
    assert (interval.lower, interval.upper) == pytest.approx(tuple(expected), abs=1e-12)


def test_mean_interval_matches_t_interval_on_raw_values_with_zeros():
    rng = np.random.default_rng(7)
    # 2,000 assigned users, 8% of whom bought something; the rest count as 0.
    values = np.where(rng.random(2000) < 0.08, rng.gamma(2.0, 25.0, 2000), 0.0)
    interval = mean_interval(sample_stats(values), confidence=0.95)
    lower, upper = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values)
    )
    assert interval.lower == pytest.approx(lower, rel=1e-9)
    assert interval.upper == pytest.approx(upper, rel=1e-9)
    assert interval.message == ""


@pytest.mark.parametrize("stats", [SampleStats(0, 0.0, 0.0), SampleStats(1, 4.0, 16.0)])
def test_mean_interval_needs_two_users(stats):
    interval = mean_interval(stats)
    assert interval.lower == interval.upper == stats.mean
    assert "fewer than two" in interval.message


# --- uplift ----------------------------------------------------------------------------------


def test_relative_uplift_proportions_delta_method():
    control, variant = ProportionStats(10000, 1000), ProportionStats(10000, 1100)
    result = relative_uplift(control, variant)
    assert result.estimate == pytest.approx(0.10)
    # By hand: Var(m_v)/m_c^2 + m_v^2 Var(m_c)/m_c^4.
    var_c, var_v = 0.1 * 0.9 / 10000, 0.11 * 0.89 / 10000
    se = math.sqrt(var_v / 0.1**2 + 0.11**2 * var_c / 0.1**4)
    assert result.interval.lower == pytest.approx(0.10 - 1.959963984540054 * se)
    assert result.interval.upper == pytest.approx(0.10 + 1.959963984540054 * se)


def test_relative_uplift_interval_covers_in_simulation():
    """The delta-method interval should cover the true uplift about 95% of the time."""
    rng = np.random.default_rng(3)
    covered = 0
    trials = 2000
    for _ in range(trials):
        c = ProportionStats(5000, int(rng.binomial(5000, 0.10)))
        v = ProportionStats(5000, int(rng.binomial(5000, 0.12)))
        interval = relative_uplift(c, v).interval
        covered += interval.lower <= 0.2 <= interval.upper
    assert 0.93 <= covered / trials <= 0.97


def test_relative_uplift_value_metric_matches_numpy():
    rng = np.random.default_rng(11)
    control = np.where(rng.random(4000) < 0.1, rng.gamma(2.0, 20.0, 4000), 0.0)
    variant = np.where(rng.random(4000) < 0.1, rng.gamma(2.0, 23.0, 4000), 0.0)
    result = relative_uplift(sample_stats(control), sample_stats(variant))
    assert result.estimate == pytest.approx(variant.mean() / control.mean() - 1)
    se_c, se_v = scipy_stats.sem(control), scipy_stats.sem(variant)
    ratio_se = math.sqrt(
        se_v**2 / control.mean() ** 2 + variant.mean() ** 2 * se_c**2 / control.mean() ** 4
    )
    assert result.interval.upper - result.estimate == pytest.approx(1.959963984540054 * ratio_se)


@pytest.mark.parametrize(
    "control, variant",
    [
        (ProportionStats(1000, 0), ProportionStats(1000, 5)),
        (ProportionStats(0, 0), ProportionStats(10, 1)),
        (SampleStats(100, 0.0, 0.0), SampleStats(100, 50.0, 900.0)),
    ],
)
def test_relative_uplift_undefined_gives_message(control, variant):
    result = relative_uplift(control, variant)
    assert result.estimate is None and result.interval is None
    assert result.message


def test_relative_uplift_rejects_mixed_statistics():
    with pytest.raises(TypeError):
        relative_uplift(ProportionStats(10, 1), SampleStats(10, 1.0, 1.0))


# --- SRM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "observed, shares",
    [
        ([5000, 5000], [50, 50]),
        ([5200, 4800], [50, 50]),
        ([2010, 3050, 4940], [20, 30, 50]),
        ([1000, 1300, 1000, 1000], [25, 25, 25, 25]),
    ],
)
def test_srm_matches_scipy_chisquare(observed, shares):
    total = sum(observed)
    expected = [total * s / sum(shares) for s in shares]
    reference = scipy_stats.chisquare(observed, expected)
    result = srm_test(observed, shares)
    assert result.chi2 == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)
    assert result.flagged == (reference.pvalue < 0.001)


def test_srm_flags_a_broken_split():
    result = srm_test([1000, 1300, 1000, 1000], [25, 25, 25, 25])
    assert result.flagged and "mismatch" in result.message


def test_srm_ignores_zero_share_arms_but_says_so():
    result = srm_test([5000, 5000, 0], [50, 50, 0])
    assert not result.flagged and result.message == ""
    stray = srm_test([5000, 5000, 12], [50, 50, 0])
    assert stray.chi2 == pytest.approx(0.0)
    assert "12 users" in stray.message


@pytest.mark.parametrize(
    "observed, shares", [([0, 0], [50, 50]), ([10], [100]), ([], []), ([10, 10], [100, 0])]
)
def test_srm_degenerate_is_not_flagged(observed, shares):
    result = srm_test(observed, shares)
    assert not result.flagged and result.p_value == 1.0 and result.message


# --- sample size --------------------------------------------------------------------------------


@pytest.mark.parametrize("base_rate", [0.02, 0.05, 0.10, 0.30])
@pytest.mark.parametrize("uplift", [0.05, 0.10, 0.20])
def test_required_sample_size_against_statsmodels(base_rate, uplift):
    n = required_sample_size(base_rate, uplift)
    target = base_rate * (1 + uplift)
    # Exactly the pooled/unpooled two-proportion z-test statsmodels computes power for:
    power = power_proportions_2indep(target - base_rate, base_rate, n, return_results=False)
    power_one_less = power_proportions_2indep(
        target - base_rate, base_rate, n - 1, return_results=False
    )
    assert power >= 0.8 - 1e-4
    assert power_one_less < 0.8 + 1e-4
    # And within 1% of the arcsine (Cohen's h) approximation.
    arcsine = NormalIndPower().solve_power(
        proportion_effectsize(target, base_rate), alpha=0.05, power=0.8, ratio=1.0
    )
    assert n == pytest.approx(arcsine, rel=0.01)


def test_required_sample_size_textbook_value():
    # 10% -> 11%: (1.96 sqrt(2 * .105 * .895) + 0.8416 sqrt(.09 + .0979))^2 / .01^2
    assert required_sample_size(0.10, 0.10) == 14751


@pytest.mark.parametrize("base_rate, uplift", [(0.0, 0.1), (1.0, 0.1), (0.95, 0.10), (0.1, 0.0)])
def test_required_sample_size_rejects_unplannable_input(base_rate, uplift):
    with pytest.raises(ValueError):
        required_sample_size(base_rate, uplift)


def test_d7_retention_is_a_proportion_of_eligible_users():
    retention = d7_retention(eligible_users=400, retained_users=88)
    assert retention == ProportionStats(400, 88)
    assert retention.rate == pytest.approx(0.22)

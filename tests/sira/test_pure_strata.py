"""Period-stratified estimates, the stratified CS and SRM from logged probabilities."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sira.bandit import BanditConfig, bandit_weights
from sira.failfast import (
    FailFastConfig,
    difference_confidence_sequence,
    guardrail_flags,
    sequential_flags,
    stratified_confidence_sequence,
)
from sira.srm import srm_test, srm_test_periods
from sira.stats import ProportionStats
from sira.strata import PeriodTable, arm_estimates, difference_estimates, shared_periods


def test_one_period_is_exactly_the_pooled_numbers():
    arms = [ProportionStats(1200, 61), ProportionStats(1180, 83)]
    table = PeriodTable.single(arms)
    assert [(p.users, p.successes) for p in table.effective()] == [(1200, 61), (1180, 83)]
    ours = stratified_confidence_sequence(table, 0, 1, 0.05, 2000)
    theirs = difference_confidence_sequence(61, 1200, 83, 1180, 0.05, 2000)
    assert ours == pytest.approx(tuple(float(x) for x in theirs), abs=0, rel=0)


def test_stratified_rate_and_variance_match_a_direct_computation():
    users = np.array([[100, 300], [400, 100], [50, 50]], dtype=float)
    successes = np.array([[5, 12], [40, 11], [3, 2]], dtype=float)
    estimates = arm_estimates(users, successes)
    weights = users.sum(axis=1) / users.sum()
    rate = (weights[:, None] * successes / users).sum(axis=0)
    smoothed = (successes + 1) / (users + 2)
    variance = (weights[:, None] ** 2 * smoothed * (1 - smoothed) / users).sum(axis=0)
    assert estimates["rate"] == pytest.approx(rate, rel=1e-12)
    assert estimates["variance"] == pytest.approx(variance, rel=1e-12)
    # the effective binomial has the same mean and (smoothed) variance
    assert estimates["effective_successes"] / estimates["effective_users"] == pytest.approx(rate)

    difference = difference_estimates(users, successes, 0, 1)
    assert difference["estimate"] == pytest.approx(rate[1] - rate[0], rel=1e-12)
    assert difference["variance"] == pytest.approx(variance.sum(), rel=1e-12)
    pairs = 2 * users[:, 0] * users[:, 1] / users.sum(axis=1)
    assert difference["effective_users"] == pytest.approx(1 / (weights**2 / pairs).sum(), rel=1e-12)


def test_simpsons_paradox_is_removed():
    # Equal arms in each period; arm 1 got most of the high-rate period's traffic.
    users = np.array([[9000, 1000], [1000, 9000]], dtype=float)
    successes = np.array([[360, 40], [100, 900]], dtype=float)  # 4% then 10% for both arms
    table = PeriodTable(users, successes)
    pooled = table.pooled()
    assert pooled[1].rate - pooled[0].rate > 0.04  # the pooled view invents a winner
    assert table.difference(0, 1).estimate == pytest.approx(0.0, abs=1e-12)
    assert sequential_flags(PeriodTable.single(pooled), FailFastConfig())  # pooled: false stop
    assert sequential_flags(table, FailFastConfig()) == []


def test_periods_an_arm_misses_are_left_out_of_its_comparisons():
    users = np.array([[500, 500, 500], [800, 800, 0]], dtype=float)
    successes = np.array([[50, 50, 50], [160, 160, 0]], dtype=float)
    assert shared_periods(users).tolist() == [True, False]
    table = PeriodTable(users, successes)
    # arm 2 was paused for the second period: compared with arm 0 on the first only
    assert table.difference(0, 2).periods == 1
    assert table.difference(0, 2).estimate == pytest.approx(0.0)
    assert table.difference(0, 1).periods == 2


def test_bandit_posteriors_ignore_the_drift_and_burn_in_counts_real_users():
    users = np.array([[600, 600], [100, 4000]], dtype=float)
    successes = np.array([[24, 24], [10, 400]], dtype=float)  # 4% then 10%, both arms equal
    table = PeriodTable(users, successes)
    result = bandit_weights(table, [50, 50], [False, False], BanditConfig(min_samples=50))
    assert not result.burn_in
    assert 0.3 < result.prob_best[0] < 0.7  # pooled counts would say arm 1 (4% vs 10%)
    pooled = bandit_weights(table.pooled(), [50, 50], [False, False], BanditConfig(min_samples=50))
    assert pooled.prob_best[1] > 0.95


def test_guardrail_flags_accept_a_period_table():
    users = np.array([[2000, 2000], [2000, 2000]], dtype=float)
    successes = np.array([[20, 80], [20, 80]], dtype=float)
    flags = guardrail_flags(PeriodTable(users, successes), 0, FailFastConfig())
    assert [flag.arm for flag in flags] == [0]
    assert guardrail_flags(PeriodTable(users, successes[:, ::-1].copy()), 0, FailFastConfig()) == []


def test_srm_with_one_period_is_pearson():
    ours = srm_test_periods([[5100, 4900]], [[0.5, 0.5]])
    theirs = srm_test([5100, 4900], [50, 50])
    assert ours.chi2 == pytest.approx(theirs.chi2) and ours.p_value == pytest.approx(theirs.p_value)


def test_srm_across_bandit_periods_matches_the_exact_covariance():
    probabilities = np.array([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    users = np.array([[510, 490, 0], [190, 720, 90], [300, 310, 2400]], dtype=float)
    result = srm_test_periods(users, probabilities)
    sizes = users.sum(axis=1)
    expected = sizes @ probabilities
    covariance = sum(n * (np.diag(p) - np.outer(p, p)) for n, p in zip(sizes, probabilities))
    deviation = users.sum(axis=0) - expected
    chi2 = deviation @ np.linalg.pinv(covariance) @ deviation
    assert result.chi2 == pytest.approx(chi2, rel=1e-9)
    assert result.p_value == pytest.approx(scipy_stats.chi2.sf(chi2, 2), rel=1e-9)


def test_srm_after_a_pause_compares_the_live_arms_and_flags_a_skew():
    probabilities = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, np.nan]])
    healthy = srm_test_periods([[1000, 990, 1010], [1500, 1520, 0]], probabilities)
    assert not healthy.flagged
    skewed = srm_test_periods([[1000, 990, 1010], [1300, 1720, 0]], probabilities)
    assert skewed.flagged and "sample ratio mismatch" in skewed.message


def test_srm_is_calibrated_under_changing_probabilities():
    rng = np.random.default_rng(3)
    probabilities = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.3, 0.7]])
    p_values = np.array(
        [
            srm_test_periods(np.array([rng.multinomial(1000, p) for p in probabilities]), probabilities).p_value
            for _ in range(1000)
        ]
    )
    assert 0.03 < (p_values < 0.05).mean() < 0.07


def test_guardrail_ratio_does_not_flag_a_variant_that_sells_more_with_the_same_refund_habits():
    from sira.failfast import guardrail_ratio_flags

    config = FailFastConfig()
    # conversion 10% -> 15%, 5% of buyers refund on both sides
    bad = PeriodTable([[60_000, 60_000]], [[300, 450]])
    buyers = PeriodTable([[60_000, 60_000]], [[6_000, 9_000]])
    assert guardrail_flags(bad, 0, config)  # per assigned user the refund rate is higher
    assert guardrail_ratio_flags(bad, 0, config, 0.10, buyers) == []
    # refunds per buyer 5% -> 12%: flagged, bounds on the ratio above 1 + margin
    worse = PeriodTable([[20_000, 20_000]], [[100, 240]])
    same_sales = PeriodTable([[20_000, 20_000]], [[2_000, 2_000]])
    flags = guardrail_ratio_flags(worse, 0, config, 0.10, same_sales)
    assert [flag.arm for flag in flags] == [0] and flags[0].lower > 1.1
    # a clear 12% deterioration is flagged without a margin but not against a 10% one
    slight = PeriodTable([[2_000_000, 2_000_000]], [[10_000, 11_200]])
    many_buyers = PeriodTable([[2_000_000, 2_000_000]], [[200_000, 200_000]])
    assert guardrail_ratio_flags(slight, 0, config, 0.0, many_buyers)
    assert guardrail_ratio_flags(slight, 0, config, 0.10, many_buyers) == []


def test_guardrail_ratio_skips_until_both_sides_converted():
    from sira.failfast import guardrail_ratio_flags

    bad = PeriodTable([[500, 500]], [[0, 30]])
    nobody = PeriodTable([[500, 500]], [[0, 40]])
    assert guardrail_ratio_flags(bad, 0, FailFastConfig(), 0.10, nobody) == []

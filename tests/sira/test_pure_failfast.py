"""Fail-fast rules on fixed data, plus a small seeded check of time-uniform validity."""

import math

import numpy as np
import pytest

from sira.failfast import (
    FailFastConfig,
    bayesian_flags,
    difference_confidence_sequence,
    evaluate,
    guardrail_flags,
    sequential_flags,
)
from sira.posterior import prob_best
from sira.stats import ProportionStats

CONFIG = FailFastConfig()


def test_confidence_sequence_radius_by_hand():
    alpha, target = 0.05, 2000
    estimate, lower, upper = difference_confidence_sequence(100, 1000, 130, 1000, alpha, target)
    pa, pb = 101 / 1002, 131 / 1002
    variance = pa * (1 - pa) / 1000 + pb * (1 - pb) / 1000
    rho2 = (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / target
    t = 1000.0
    radius = math.sqrt(
        variance * t * (t * rho2 + 1) / (t**2 * rho2) * math.log((t * rho2 + 1) / alpha**2)
    )
    assert estimate == pytest.approx(0.03)
    assert (lower, upper) == pytest.approx((0.03 - radius, 0.03 + radius))


def test_confidence_sequence_is_wider_than_a_fixed_interval_and_shrinks():
    _, lower, upper = difference_confidence_sequence(
        [10, 100, 1000], [100, 1000, 10000], [12, 120, 1200], [100, 1000, 10000], 0.05, 2000
    )
    widths = upper - lower
    assert np.all(np.diff(widths) < 0)
    fixed = 2 * 1.96 * math.sqrt(2 * 0.11 * 0.89 / 1000)
    assert widths[1] > fixed


def test_effective_sample_size_handles_unbalanced_arms():
    # A bandit starves the losing arm: the CS must reflect the smaller arm.
    _, lower, upper = difference_confidence_sequence(20, 200, 1200, 10000, 0.05, 2000)
    _, lower_bal, upper_bal = difference_confidence_sequence(1000, 10000, 1200, 10000, 0.05, 2000)
    assert upper - lower > 3 * (upper_bal - lower_bal)


def test_sequential_flags_a_clearly_worse_arm():
    arms = [ProportionStats(5000, 400), ProportionStats(5000, 500), ProportionStats(5000, 505)]
    flags = sequential_flags(arms, CONFIG)
    assert [f.arm for f in flags] == [0]
    flag = flags[0]
    assert flag.against == 2  # the better of the two arms it lost to
    assert 0 < flag.lower < 0.021 < flag.upper
    assert flag.probability is None
    assert "arm 0" in flag.message


def test_sequential_does_not_flag_equal_or_close_arms():
    equal = [ProportionStats(20000, 2000)] * 4
    close = [ProportionStats(20000, 2000), ProportionStats(20000, 2080)]
    assert sequential_flags(equal, CONFIG) == []
    assert sequential_flags(close, CONFIG) == []


def test_sequential_waits_for_min_samples():
    arms = [ProportionStats(99, 0), ProportionStats(5000, 2500)]
    assert sequential_flags(arms, CONFIG) == []
    arms = [ProportionStats(100, 0), ProportionStats(5000, 2500)]
    assert [f.arm for f in sequential_flags(arms, CONFIG)] == [0]


def test_sequential_bonferroni_makes_more_arms_stricter():
    # Same pair, but in an experiment with more arms the per-pair alpha is smaller.
    pair = [ProportionStats(3000, 300), ProportionStats(3000, 385)]
    filler = [ProportionStats(3000, 340)] * 4
    assert [f.arm for f in sequential_flags(pair, CONFIG)] == [0]
    assert sequential_flags(pair + filler, CONFIG) == []


@pytest.mark.parametrize("arms", [[], [ProportionStats(10000, 10)]])
def test_fewer_than_two_arms_never_flag(arms):
    assert sequential_flags(arms, CONFIG) == []
    assert bayesian_flags(arms, CONFIG) == []


def test_all_or_no_successes_do_not_crash():
    arms = [ProportionStats(500, 0), ProportionStats(500, 500)]
    assert [f.arm for f in sequential_flags(arms, CONFIG)] == [0]
    assert [f.arm for f in bayesian_flags(arms, CONFIG)] == [0]
    assert sequential_flags([ProportionStats(500, 0)] * 2, CONFIG) == []


def test_sequential_is_time_uniform_on_equal_arms():
    """200 looks at 400 equal-arm experiments: the flag rate stays below alpha.

    (bench/sim_failfast.py runs the full 10,000-replication version.)"""
    rng = np.random.default_rng(147)
    looks = 100 * np.arange(1, 201)
    successes = np.cumsum(rng.binomial(100, 0.1, size=(400, 2, 200)), axis=2)
    _, lower, upper = difference_confidence_sequence(
        successes[:, 0], looks, successes[:, 1], looks, 0.05, CONFIG.target_samples
    )
    ever = ((lower > 0) | (upper < 0)).any(axis=1).mean()
    assert ever <= 0.05


def test_bayesian_flags_when_p_not_best_exceeds_threshold():
    arms = [ProportionStats(2000, 160), ProportionStats(2000, 210)]
    flags = bayesian_flags(arms, CONFIG)
    expected = 1 - prob_best([161, 211], [1841, 1791])[0]
    assert [f.arm for f in flags] == [0]
    assert flags[0].against == 1
    assert flags[0].probability == pytest.approx(expected)
    assert flags[0].lower is None and flags[0].upper is None


def test_bayesian_needs_every_arm_at_min_samples():
    arms = [ProportionStats(2000, 160), ProportionStats(2000, 210), ProportionStats(50, 5)]
    assert bayesian_flags(arms, CONFIG) == []


def test_bayesian_cries_wolf_with_many_equal_looking_arms():
    # Four arms within noise of each other: the seed's rule already flags one, the
    # sequential rule does not.
    arms = [ProportionStats(1000, n) for n in (100, 101, 99, 76)]
    assert [f.arm for f in bayesian_flags(arms, CONFIG)] == [3]
    assert sequential_flags(arms, CONFIG) == []


def test_evaluate_dispatches_on_rule():
    arms = [ProportionStats(2000, 160), ProportionStats(2000, 210)]
    assert evaluate(arms, FailFastConfig(rule="bayesian")) == bayesian_flags(arms, CONFIG)
    assert evaluate(arms, FailFastConfig(rule="sequential")) == sequential_flags(arms, CONFIG)
    with pytest.raises(ValueError):
        evaluate(arms, FailFastConfig(rule="coin-flip"))


def test_guardrail_flags_a_variant_with_more_fraud():
    control = ProportionStats(8000, 80)  # 1.0% fraud alerts
    variants = [ProportionStats(8000, 85), ProportionStats(8000, 200), ProportionStats(50, 40)]
    flags = guardrail_flags(control, variants, CONFIG)
    assert [f.arm for f in flags] == [1]
    assert flags[0].against is None
    assert flags[0].lower > 0
    assert "guardrail" in flags[0].message


def test_guardrail_ignores_variants_that_are_better_or_too_small():
    control = ProportionStats(8000, 200)
    assert guardrail_flags(control, [ProportionStats(8000, 80)], CONFIG) == []
    assert guardrail_flags(ProportionStats(50, 0), [ProportionStats(8000, 800)], CONFIG) == []
    assert guardrail_flags(control, [], CONFIG) == []

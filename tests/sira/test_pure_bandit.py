"""Bandit weights: burn-in, floor, pausing, and the Thompson-sampling equivalence."""

import numpy as np
import pytest

from sira.bandit import BanditConfig, bandit_weights, draw_arm, posteriors
from sira.posterior import prob_best
from sira.stats import ProportionStats

CONFIG = BanditConfig()


def test_posteriors_are_successes_and_failures_plus_one():
    alphas, betas = posteriors([ProportionStats(100, 7), ProportionStats(0, 0)])
    assert alphas.tolist() == [8.0, 1.0]
    assert betas.tolist() == [94.0, 1.0]


def test_burn_in_uses_the_configured_shares():
    arms = [ProportionStats(500, 50), ProportionStats(99, 20), ProportionStats(500, 40)]
    result = bandit_weights(arms, [50, 30, 20], [False, False, False], CONFIG)
    assert result.burn_in
    assert result.weights == pytest.approx([0.5, 0.3, 0.2])
    assert "burn-in" in result.message
    assert result.prob_best.sum() == pytest.approx(1.0)


def test_burn_in_renormalises_over_unpaused_arms_and_ignores_paused_arms_samples():
    arms = [ProportionStats(10, 1), ProportionStats(500, 50), ProportionStats(500, 40)]
    result = bandit_weights(arms, [50, 30, 20], [False, False, False], CONFIG)
    assert result.burn_in
    paused_small = bandit_weights(arms, [50, 30, 20], [True, False, False], CONFIG)
    assert not paused_small.burn_in  # the only small arm is paused
    assert paused_small.weights[0] == 0.0
    arms = [ProportionStats(10, 1), ProportionStats(50, 5), ProportionStats(500, 40)]
    result = bandit_weights(arms, [50, 30, 20], [True, False, False], CONFIG)
    assert result.burn_in
    assert result.weights == pytest.approx([0.0, 0.6, 0.4])


def test_burn_in_with_zero_shares_splits_evenly():
    arms = [ProportionStats(0, 0)] * 3
    result = bandit_weights(arms, [100, 0, 0], [True, False, False], CONFIG)
    assert result.weights == pytest.approx([0.0, 0.5, 0.5])
    assert "evenly" in result.message


def test_after_burn_in_weights_are_floored_prob_best():
    arms = [ProportionStats(5000, 500), ProportionStats(5000, 600), ProportionStats(5000, 505)]
    result = bandit_weights(arms, [34, 33, 33], [False] * 3, CONFIG)
    assert not result.burn_in
    best = prob_best([501, 601, 506], [4501, 4401, 4496])
    assert result.prob_best == pytest.approx(best)
    assert result.weights == pytest.approx(0.01 + (1 - 3 * 0.01) * best)
    assert result.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert result.weights.min() >= 0.01 - 1e-12


def test_paused_arms_get_nothing_and_are_left_out_of_prob_best():
    arms = [ProportionStats(5000, 900), ProportionStats(5000, 500), ProportionStats(5000, 505)]
    result = bandit_weights(arms, [34, 33, 33], [True, False, False], CONFIG)
    assert result.weights[0] == 0.0 and result.prob_best[0] == 0.0
    assert result.prob_best[1:] == pytest.approx(prob_best([501, 506], [4501, 4496]))
    assert result.weights.sum() == pytest.approx(1.0)


def test_floor_is_capped_at_uniform():
    arms = [ProportionStats(5000, 500), ProportionStats(5000, 900)]
    result = bandit_weights(arms, [50, 50], [False, False], BanditConfig(floor=0.7))
    assert result.weights == pytest.approx([0.5, 0.5])


def test_one_arm_gets_everything():
    result = bandit_weights([ProportionStats(5000, 500)], [100], [False], CONFIG)
    assert result.weights == pytest.approx([1.0])


def test_all_paused_and_no_arms():
    arms = [ProportionStats(5000, 500)] * 2
    result = bandit_weights(arms, [50, 50], [True, True], CONFIG)
    assert result.weights.tolist() == [0.0, 0.0]
    assert "paused" in result.message
    empty = bandit_weights([], [], [], CONFIG)
    assert empty.weights.size == 0 and empty.message


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        bandit_weights([ProportionStats(1, 0)], [50, 50], [False], CONFIG)


def test_draw_arm_follows_weights_and_never_picks_zero_weight():
    rng = np.random.default_rng(5)
    weights = [0.0, 0.2, 0.0, 0.8, 0.0]
    draws = np.bincount([draw_arm(weights, rng) for _ in range(20000)], minlength=5)
    assert draws[[0, 2, 4]].sum() == 0
    assert draws[3] / 20000 == pytest.approx(0.8, abs=0.015)
    assert draw_arm([1.0], 3) == 0
    with pytest.raises(ValueError):
        draw_arm([0.0, 0.0], rng)


def test_draw_arm_is_reproducible_from_a_seed():
    assert [draw_arm([0.3, 0.3, 0.4], seed) for seed in range(20)] == [
        draw_arm([0.3, 0.3, 0.4], seed) for seed in range(20)
    ]


def test_prob_best_is_the_thompson_draw_probability():
    """Publishing P(best) as weights serves arms exactly as per-request Thompson draws."""
    rng = np.random.default_rng(8)
    alphas, betas = np.array([41.0, 52.0, 47.0]), np.array([461.0, 450.0, 455.0])
    draws = rng.beta(alphas, betas, size=(400_000, 3)).argmax(axis=1)
    assert np.bincount(draws) / draws.size == pytest.approx(prob_best(alphas, betas), abs=3e-3)

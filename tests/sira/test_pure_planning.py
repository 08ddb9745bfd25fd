"""The sample-size planner against statsmodels (fixed horizon) and simulation (sequential)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import samplesize_proportions_2indep_onetail

from sira.failfast import confidence_sequence_radius, difference_confidence_sequence
from sira.planning import PlanInput, PlanningError, fixed_horizon, plan_sample_size, sequential


@pytest.mark.parametrize("baseline", [0.02, 0.1, 0.35, 0.6])
@pytest.mark.parametrize("mde", [0.05, 0.2, -0.1])
@pytest.mark.parametrize("arms", [2, 3, 5])
def test_fixed_horizon_proportions_match_statsmodels(baseline, mde, arms):
    plan = fixed_horizon(PlanInput("proportion", baseline, mde, arms=arms, alpha=0.05, power=0.8))
    alpha = 0.05 / (arms - 1)
    expected = samplesize_proportions_2indep_onetail(
        diff=baseline * mde, prop2=baseline, power=0.8, ratio=1, alpha=alpha, alternative="two-sided"
    )
    assert plan.users_per_arm == math.ceil(expected)
    assert plan.alpha_per_comparison == pytest.approx(alpha)
    assert plan.total_users == plan.users_per_arm * arms


@pytest.mark.parametrize("baseline,sd,mde", [(50.0, 20.0, 0.05), (1200.0, 3000.0, 0.1), (3.0, 1.0, -0.02)])
@pytest.mark.parametrize("arms,power", [(2, 0.8), (4, 0.9)])
def test_fixed_horizon_means_match_statsmodels(baseline, sd, mde, arms, power):
    plan = fixed_horizon(PlanInput("mean", baseline, mde, sd=sd, arms=arms, power=power))
    alpha = 0.05 / (arms - 1)
    effect = abs(baseline * mde) / sd
    normal = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1)
    # statsmodels also counts the far tail, which the closed form ignores: under one user.
    assert abs(plan.users_per_arm - normal) <= 1
    assert NormalIndPower().power(effect, nobs1=plan.users_per_arm, alpha=alpha) >= power - 1e-6
    # The t-test needs a hair more (at most a couple of users at these sizes).
    t_test = TTestIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1)
    assert 0 <= t_test - plan.users_per_arm < 3


def test_days_at_the_given_traffic():
    plan = fixed_horizon(PlanInput("proportion", 0.1, 0.1, arms=2, daily_users=1000))
    assert plan.users_per_arm == 14751 and plan.total_users == 29502 and plan.days == 30
    assert fixed_horizon(PlanInput("proportion", 0.1, 0.1)).days is None


@pytest.mark.parametrize(
    "data,field",
    [
        (PlanInput("proportion", 1.2, 0.1), "baseline"),
        (PlanInput("proportion", 0.9, 0.2), "mde_relative"),
        (PlanInput("proportion", 0.1, 0.0), "mde_relative"),
        (PlanInput("mean", 10.0, 0.1), "sd"),
        (PlanInput("mean", 0.0, 0.1, sd=1.0), "baseline"),
        (PlanInput("proportion", 0.1, 0.1, arms=1), "arms"),
        (PlanInput("ratio", 0.1, 0.1), "metric_kind"),
    ],
)
def test_input_that_cannot_be_planned_names_the_field(data, field):
    with pytest.raises(PlanningError) as caught:
        plan_sample_size(data)
    assert caught.value.field == field


def test_tiny_effects_are_reported_as_out_of_reach():
    plan = plan_sample_size(PlanInput("mean", 1.0, 1e-9, sd=1e6))
    assert plan.fixed_horizon.users_per_arm is None and plan.fixed_horizon.message
    assert plan.sequential.users_per_arm is None


def test_sequential_needs_more_than_fixed_and_splits_alpha_over_pairs():
    data = PlanInput("proportion", 0.1, 0.2, arms=3)
    plan = plan_sample_size(data)
    assert plan.sequential.users_per_arm > plan.fixed_horizon.users_per_arm
    assert plan.sequential.alpha_per_comparison == pytest.approx(0.05 / 3)


REPLICATIONS = 2000


def _simulated_power_proportion(plan_n: int, p1: float, p2: float, alpha: float, rng: np.random.Generator) -> tuple[float, float]:
    """Share of simulated experiments whose always-valid CS excludes 0 at n (and by n, looking every 50 users)."""
    looks = np.arange(50, plan_n + 1, 50)
    if looks[-1] != plan_n:
        looks = np.append(looks, plan_n)
    at_n = ever = 0
    for _ in range(REPLICATIONS // 200):
        a = rng.random((200, plan_n)) < p1
        b = rng.random((200, plan_n)) < p2
        sa = np.cumsum(a, axis=1)[:, looks - 1]
        sb = np.cumsum(b, axis=1)[:, looks - 1]
        _, lower, upper = difference_confidence_sequence(sa, looks, sb, looks, alpha, 2_000)
        excluded = (lower > 0) | (upper < 0)
        at_n += int(excluded[:, -1].sum())
        ever += int(excluded.any(axis=1).sum())
    return at_n / REPLICATIONS, ever / REPLICATIONS


def test_sequential_plan_reaches_its_power_in_simulation():
    data = PlanInput("proportion", 0.1, 0.3, power=0.8)
    plan = sequential(data)
    rng = np.random.default_rng(14)
    at_n, ever = _simulated_power_proportion(plan.users_per_arm, 0.1, 0.13, plan.alpha_per_comparison, rng)
    se = math.sqrt(0.8 * 0.2 / REPLICATIONS)
    # The normal approximation at the planned look, within 3 standard errors...
    assert abs(at_n - 0.8) < 3 * se, (at_n, plan.users_per_arm)
    # ...and continuous monitoring can only stop more often by then.
    assert ever >= at_n


def test_sequential_plan_for_a_mean_in_simulation():
    data = PlanInput("mean", 20.0, 0.1, sd=10.0, power=0.8)
    plan = sequential(data)
    n = plan.users_per_arm
    rng = np.random.default_rng(15)
    a = rng.normal(20.0, 10.0, (REPLICATIONS, n))
    b = rng.normal(22.0, 10.0, (REPLICATIONS, n))
    difference = b.mean(axis=1) - a.mean(axis=1)
    variance = a.var(axis=1, ddof=1) / n + b.var(axis=1, ddof=1) / n
    radius = confidence_sequence_radius(variance, n, plan.alpha_per_comparison, 2_000)
    power = float(np.mean(np.abs(difference) > radius))
    assert abs(power - 0.8) < 3 * math.sqrt(0.8 * 0.2 / REPLICATIONS), (power, n)


def test_sequential_plan_holds_its_level_when_there_is_no_effect():
    """With equal arms the CS at the planned n excludes 0 in at most alpha of experiments."""
    plan = sequential(PlanInput("proportion", 0.1, 0.3))
    rng = np.random.default_rng(16)
    _, ever = _simulated_power_proportion(plan.users_per_arm, 0.1, 0.1, plan.alpha_per_comparison, rng)
    assert ever <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / REPLICATIONS)

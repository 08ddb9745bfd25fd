"""POST /api/planning/sample-size: the numbers (statsmodels agrees) and field-named errors."""
from __future__ import annotations

import math

import pytest
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import samplesize_proportions_2indep_onetail


def _plan(client, auth, **body):
    return client.post("/api/planning/sample-size", json=body, headers=auth("marketing"))


def test_proportion_plan(client, auth):
    response = _plan(client, auth, metric_kind="proportion", baseline=0.1, mde_relative=0.1, arms=2, alpha=0.05, power=0.8, daily_users=1000)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    expected = math.ceil(samplesize_proportions_2indep_onetail(0.01, 0.1, 0.8, alpha=0.05))
    assert body["users_per_arm"] == body["fixed_horizon"]["users_per_arm"] == expected
    assert body["total_users"] == 2 * expected and body["days"] == math.ceil(2 * expected / 1000)
    assert body["sequential"] is False
    sequential = body["sequential_plan"]
    assert sequential["users_per_arm"] > expected and sequential["days"] == math.ceil(sequential["total_users"] / 1000)


def test_mean_plan_with_three_arms_sequential(client, auth):
    body = _plan(
        client, auth, metric_kind="mean", baseline=50, sd=20, mde_relative=0.05, arms=3, alpha=0.05, power=0.8,
        daily_users=500, sequential=True,
    ).get_json()
    normal = NormalIndPower().solve_power(effect_size=2.5 / 20, alpha=0.025, power=0.8)
    assert abs(body["fixed_horizon"]["users_per_arm"] - normal) <= 1
    assert body["users_per_arm"] == body["sequential_plan"]["users_per_arm"]
    assert body["total_users"] == 3 * body["users_per_arm"]
    assert body["sequential_plan"]["alpha_per_comparison"] == pytest.approx(0.05 / 3)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"metric_kind": "proportion", "baseline": 1.5, "mde_relative": 0.1}, "baseline"),
        ({"metric_kind": "proportion", "baseline": 0.9, "mde_relative": 0.5}, "mde_relative"),
        ({"metric_kind": "mean", "baseline": 10, "mde_relative": 0.1}, "sd"),
        ({"metric_kind": "mean", "baseline": 10, "mde_relative": 0.1, "sd": -1}, "sd"),
        ({"metric_kind": "ratio", "baseline": 0.1, "mde_relative": 0.1}, "metric_kind"),
        ({"metric_kind": "proportion", "baseline": 0.1, "mde_relative": 0.1, "arms": 1}, "arms"),
        ({"metric_kind": "proportion", "baseline": 0.1, "mde_relative": 0.1, "power": 1.0}, "power"),
        ({"metric_kind": "proportion", "baseline": 0.1, "mde_relative": 0.1, "daily_users": 0}, "daily_users"),
        ({"metric_kind": "proportion", "baseline": 0.1, "mde_relative": 0.0}, "mde_relative"),
        ({"metric_kind": "proportion", "baseline": "x", "mde_relative": 0.1}, "baseline"),
        ({"metric_kind": "proportion", "baseline": 0.1, "mde_relative": 0.1, "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, auth, body, field):
    response = _plan(client, auth, **body)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]


def test_an_unreachable_effect_is_not_an_error(client, auth):
    body = _plan(client, auth, metric_kind="mean", baseline=1, sd=1e9, mde_relative=1e-6).get_json()
    assert body["users_per_arm"] is None and body["fixed_horizon"]["message"]

"""Results computed from the rollups equal a from-scratch computation over the raw rows."""
from __future__ import annotations

import math
import uuid
from collections import defaultdict
from datetime import timedelta

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from core.config import libpq_url
from core.redis import get_redis
from models.enums import EVENT_TYPES, LOWER_IS_BETTER
from services.analysis import results as sira_results
from tests.support.sira_data import NOW, set_arm, simulate


@pytest.fixture
def redis_client(settings, app):
    return get_redis(settings.redis_url)


def expected_from_raw(raw, experiment, now):
    """Every per-variant number, recomputed with numpy/scipy/statsmodels from the raw rows."""
    assigned = defaultdict(list)
    for a in raw.assignments:
        assigned[a["variant_id"]].append(a)
    per_user = defaultdict(lambda: defaultdict(float))  # (variant, type) -> user -> value sum
    events = defaultdict(int)
    for e in raw.events:
        key = (e["variant_id"], e["event_type"])
        per_user[key][e["molam_id"]] += e["value"] or 0.0
        events[key] += 1
    expected = {}
    for variant in experiment["variants"]:
        vid = variant["id"]
        n = len(assigned[vid])
        metrics = {}
        for event_type in EVENT_TYPES:
            users = per_user[(vid, event_type)]
            successes = len(users)
            values = np.zeros(n)
            values[: len(users)] = list(users.values())
            low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
            metrics[event_type] = {
                "users": successes,
                "events": events[(vid, event_type)],
                "rate": successes / n,
                "interval": (low, high),
                "credible_interval": tuple(stats.beta.ppf([0.025, 0.975], successes + 1, n - successes + 1)),
                "values": values,
            }
        expected[vid] = {"assigned": n, "metrics": metrics}
    return expected


def prob_greater(a1, b1, a2, b2):
    """P(X2 > X1) by adaptive quadrature."""
    value, _ = integrate.quad(lambda x: stats.beta.pdf(x, a2, b2) * stats.beta.cdf(x, a1, b1), 0, 1, epsabs=1e-12, limit=200)
    return value


def prob_best_quad(alphas, betas):
    out = []
    for i in range(len(alphas)):
        def integrand(x, i=i):
            value = stats.beta.pdf(x, alphas[i], betas[i])
            for j in range(len(alphas)):
                if j != i:
                    value *= stats.beta.cdf(x, alphas[j], betas[j])
            return value
        out.append(integrate.quad(integrand, 0, 1, epsabs=1e-12, limit=400, points=[a / (a + b) for a, b in zip(alphas, betas)])[0])
    return out


def test_results_equal_from_scratch_computation(app, settings, create_experiment, redis_client):
    experiment = create_experiment(
        start=True,
        variants=[
            {"name": "Control", "config": {"color": "blue"}, "traffic_share": 40, "is_control": True},
            {"name": "Green", "config": {"color": "green"}, "traffic_share": 30},
            {"name": "Red", "config": {"color": "red"}, "traffic_share": 30},
        ],
    )
    raw = simulate(
        settings.database_url,
        experiment,
        users_per_arm=[800, 600, 650],
        rates={"conversion": [0.10, 0.13, 0.08], "refund": [0.02, 0.02, 0.05], "click": [0.5, 0.55, 0.45]},
    )
    from core import db

    with db.session_scope() as session:
        results = sira_results.experiment_results(session, redis_client, uuid.UUID(experiment["id"]), now=NOW)
    expected = expected_from_raw(raw, experiment, NOW)

    assert results["primary_metric"] == "conversion"
    assert [v["name"] for v in results["variants"]] == ["Control", "Green", "Red"]
    control_id = experiment["variants"][0]["id"]
    control = expected[control_id]
    for variant in results["variants"]:
        want = expected[variant["variant_id"]]
        assert variant["assigned_users"] == want["assigned"]
        for event_type in EVENT_TYPES:
            got, exp = variant["metrics"][event_type], want["metrics"][event_type]
            assert got["users"] == exp["users"] and got["events"] == exp["events"]
            assert got["rate"] == pytest.approx(exp["rate"], abs=1e-12)
            assert (got["interval"]["lower"], got["interval"]["upper"]) == pytest.approx(exp["interval"], abs=1e-9)
            assert (got["credible_interval"]["lower"], got["credible_interval"]["upper"]) == pytest.approx(exp["credible_interval"], abs=1e-8)
            values = exp["values"]
            assert got["value_mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-12)
            if values.std() > 0:
                half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
                assert got["value_interval"]["lower"] == pytest.approx(values.mean() - half, rel=1e-6)
                assert got["value_interval"]["upper"] == pytest.approx(values.mean() + half, rel=1e-6)
            if variant["is_control"]:
                assert got["uplift"] is None and got["prob_beat_control"] is None
                continue
            c = control["metrics"][event_type]
            n_c, n_v = control["assigned"], want["assigned"]
            p_c, p_v = c["users"] / n_c, exp["users"] / n_v
            difference = confint_proportions_2indep(
                exp["users"], n_v, c["users"], n_c, method="newcomb", compare="diff"
            )
            assert got["difference"]["estimate"] == pytest.approx(p_v - p_c, abs=1e-12)
            assert (got["difference"]["lower"], got["difference"]["upper"]) == pytest.approx(difference, abs=1e-9)
            assert got["difference"]["always_valid_lower"] <= got["difference"]["lower"]
            assert got["difference"]["always_valid_upper"] >= got["difference"]["upper"]
            if p_c > 0:
                estimate = p_v / p_c - 1
                # MOVER-R from the two Wilson intervals (Donner & Zou 2012)
                l_c, u_c = proportion_confint(c["users"], n_c, method="wilson")
                l_v, u_v = proportion_confint(exp["users"], n_v, method="wilson")
                lower = (p_v * p_c - math.sqrt(max((p_v * p_c) ** 2 - l_v * u_c * (2 * p_v - l_v) * (2 * p_c - u_c), 0))) / (u_c * (2 * p_c - u_c))
                upper = (p_v * p_c + math.sqrt(max((p_v * p_c) ** 2 - u_v * l_c * (2 * p_v - u_v) * (2 * p_c - l_c), 0))) / (l_c * (2 * p_c - l_c))
                assert got["uplift"]["estimate"] == pytest.approx(estimate, rel=1e-9, abs=1e-12)
                assert got["uplift"]["lower"] == pytest.approx(max(lower, 0) - 1, rel=1e-7, abs=1e-12)
                assert got["uplift"]["upper"] == pytest.approx(upper - 1, rel=1e-7, abs=1e-12)
                assert got["uplift"]["always_valid_lower"] <= got["uplift"]["lower"]
            else:
                assert got["uplift"]["estimate"] is None and got["uplift"]["message"]
            p_higher = prob_greater(c["users"] + 1, n_c - c["users"] + 1, exp["users"] + 1, n_v - exp["users"] + 1)
            want_beat = 1 - p_higher if event_type in LOWER_IS_BETTER else p_higher
            assert got["prob_beat_control"] == pytest.approx(want_beat, abs=1e-6)

    alphas = [expected[v["id"]]["metrics"]["conversion"]["users"] + 1 for v in experiment["variants"]]
    betas = [expected[v["id"]]["assigned"] - expected[v["id"]]["metrics"]["conversion"]["users"] + 1 for v in experiment["variants"]]
    assert [v["alpha"] for v in results["variants"]] == alphas
    assert [v["beta"] for v in results["variants"]] == betas
    assert [v["prob_best"] for v in results["variants"]] == pytest.approx(prob_best_quad(alphas, betas), abs=1e-6)

    # SRM against the 40/30/30 shares, as scipy computes it.
    observed = [expected[v["id"]]["assigned"] for v in experiment["variants"]]
    chi2, p_value = stats.chisquare(observed, np.array([0.4, 0.3, 0.3]) * sum(observed))
    assert results["srm"]["chi2"] == pytest.approx(chi2, rel=1e-9)
    assert results["srm"]["p_value"] == pytest.approx(p_value, rel=1e-6)
    assert results["srm"]["flagged"] is bool(p_value < 0.001)
    # A fixed split's weights are its shares; nothing is computed yet by the bandit job.
    assert [v["weight"] for v in results["variants"]] == pytest.approx([0.4, 0.3, 0.3])
    assert results["computed_at"] == NOW.isoformat()


def test_srm_flags_a_skewed_split(app, settings, create_experiment, redis_client):
    experiment = create_experiment(start=True)
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=1000, successes=100)
    set_arm(settings.database_url, experiment["id"], green, assigned=1200, successes=120)
    from core import db

    with db.session_scope() as session:
        results = sira_results.experiment_results(session, redis_client, uuid.UUID(experiment["id"]))
    assert results["srm"]["flagged"] is True
    assert results["srm"]["p_value"] == pytest.approx(stats.chisquare([1000, 1200]).pvalue, rel=1e-6)


def test_d7_retention_from_assignments_and_user_rollups(app, settings, create_experiment, redis_client):
    experiment = create_experiment(start=True)
    # Backdate the start so users assigned up to 20 days ago are plausible.
    import psycopg


    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        conn.execute("UPDATE experiments SET started_at = %s WHERE id = %s", (NOW - timedelta(days=30), experiment["id"]))
    raw = simulate(
        settings.database_url,
        experiment,
        users_per_arm=[300, 300],
        rates={"conversion": [0.1, 0.1]},
        assigned_days_ago=(0.5, 20.0),
        returning_rate=0.6,
        seed=11,
    )
    from core import db

    with db.session_scope() as session:
        results = sira_results.experiment_results(session, redis_client, uuid.UUID(experiment["id"]), now=NOW)

    engagement = defaultdict(list)
    for e in raw.events:
        if e["event_type"] in ("view", "click", "conversion"):
            engagement[e["molam_id"]].append(e["occurred_at"])
    for variant in results["variants"]:
        eligible = [a for a in raw.assignments if a["variant_id"] == variant["variant_id"] and a["assigned_at"] <= NOW - timedelta(days=8)]
        retained = [
            a for a in eligible
            if any(a["assigned_at"] + timedelta(days=7) <= t < a["assigned_at"] + timedelta(days=8) for t in engagement[a["molam_id"]])
        ]
        assert len(eligible) > 50 and len(retained) > 3
        d7 = variant["d7_retention"]
        assert d7["eligible"] == len(eligible) and d7["retained"] == len(retained)
        assert d7["rate"] == pytest.approx(len(retained) / len(eligible))
        low, high = proportion_confint(len(retained), len(eligible), method="wilson")
        assert (d7["interval"]["lower"], d7["interval"]["upper"]) == pytest.approx((low, high), abs=1e-9)
    # Cached in Redis: a second call is served from the cache even after the data moves.
    assert redis_client.get(sira_results.d7_key(experiment["id"])) is not None


def test_empty_experiment_has_well_formed_results(app, settings, create_experiment, redis_client):
    experiment = create_experiment()  # draft, nobody assigned
    from core import db

    with db.session_scope() as session:
        results = sira_results.experiment_results(session, redis_client, uuid.UUID(experiment["id"]))
    assert results["status"] == "draft"
    for variant in results["variants"]:
        assert variant["assigned_users"] == 0
        assert variant["alpha"] == 1 and variant["beta"] == 1
        assert variant["prob_best"] == pytest.approx(0.5)
        conversion = variant["metrics"]["conversion"]
        assert conversion["rate"] == 0 and conversion["interval"] == {"lower": 0.0, "upper": 1.0}
        assert conversion["prob_beat_control"] is None
        assert variant["d7_retention"] == {"eligible": 0, "retained": 0, "rate": None, "interval": None}
    assert results["srm"]["flagged"] is False


def test_lower_is_better_primary_metric_flips_the_posterior(app, settings, create_experiment, redis_client):
    experiment = create_experiment(start=True, primary_metric="churn")
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=1000, successes=200, event_type="churn")
    set_arm(settings.database_url, experiment["id"], green, assigned=1000, successes=100, event_type="churn")
    from core import db

    with db.session_scope() as session:
        results = sira_results.experiment_results(session, redis_client, uuid.UUID(experiment["id"]))
    control_result, green_result = results["variants"]
    # Success = did not churn: alpha counts the users who stayed.
    assert (control_result["alpha"], control_result["beta"]) == (801, 201)
    assert green_result["prob_best"] > 0.999
    assert green_result["metrics"]["churn"]["rate"] == pytest.approx(0.1)
    assert green_result["metrics"]["churn"]["prob_beat_control"] > 0.999


def test_results_without_redis(app, settings, create_experiment):
    """Redis down: D7 is computed from PostgreSQL instead of the cache; nothing else needs Redis."""
    import redis as redis_lib

    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    experiment = create_experiment(start=True)
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=200, successes=20)
    from core import db

    with db.session_scope() as session:
        results = sira_results.experiment_results(session, dead, uuid.UUID(experiment["id"]))
    assert results["variants"][0]["assigned_users"] == 200
    assert results["variants"][0]["d7_retention"]["eligible"] == 0

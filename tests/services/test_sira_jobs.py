"""SIRA jobs on real PostgreSQL and Redis: state, history, published weights, fail-fast and
guardrail findings recorded once, audited as ``sira``, and their actions applied."""
from __future__ import annotations

import json
import threading

import numpy as np
import psycopg
import pytest

from core.config import libpq_url
from core.redis import get_redis
from services.analysis import jobs as sira_jobs
from services.analysis import scan as sira_scan
from services.cache import definition_key
from sira.bandit import BanditConfig, bandit_weights
from sira.stats import ProportionStats
from tests.support.sira_data import NO_WINDOWS, set_arm, set_rollup


@pytest.fixture
def redis_client(settings, app):
    return get_redis(settings.redis_url)


def rows(settings, query, *params):
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        return conn.execute(query, params).fetchall()


def bandit_experiment(create_experiment, **overrides):
    return create_experiment(start=True, mode="bandit", **{"attribution_window_s": NO_WINDOWS, **overrides})


def test_recompute_writes_state_history_and_weights(app, settings, create_experiment, redis_client):
    experiment = bandit_experiment(create_experiment)
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=500, successes=50)
    set_arm(settings.database_url, experiment["id"], green, assigned=500, successes=70)

    summary = sira_jobs.recompute_posteriors(redis_client)
    assert summary.experiments == 1 and summary.arms == 2 and summary.published == 1 and summary.history_rows == 2

    want = bandit_weights([ProportionStats(500, 50), ProportionStats(500, 70)], [50, 50], [False, False], BanditConfig())
    state = rows(settings, "SELECT variant_id::text, users, successes, alpha, beta, prob_best, weight, burn_in "
                           "FROM experiment_bandit_state ORDER BY alpha")
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in state] == [(control, 500, 50, 51, 451), (green, 500, 70, 71, 431)]
    assert [r[5] for r in state] == pytest.approx(list(want.prob_best), abs=1e-12)
    assert [r[6] for r in state] == pytest.approx(list(want.weights), abs=1e-12)
    assert not any(r[7] for r in state)

    published = json.loads(redis_client.get(f"sira:weights:{experiment['id']}"))
    assert published["burn_in"] is False
    assert published["weights"] == pytest.approx({control: want.weights[0], green: want.weights[1]})
    assert set(published) == {"weights", "burn_in", "period", "computed_at"}
    assert published["period"] == 1  # the first weights after burn-in open period 1
    assert 0 < redis_client.ttl(f"sira:weights:{experiment['id']}") <= sira_jobs.weights_ttl_seconds(30)

    # Idempotent: nothing changed, so no new history; state is refreshed in place.
    again = sira_jobs.recompute_posteriors(redis_client)
    assert again.history_rows == 0
    assert rows(settings, "SELECT count(*) FROM experiment_bandit_history")[0][0] == 2
    assert rows(settings, "SELECT count(*) FROM experiment_bandit_state")[0][0] == 2

    # New data: one more history point per arm.
    set_rollup(settings.database_url, experiment["id"], green, "conversion", users=90)
    assert sira_jobs.recompute_posteriors(redis_client).history_rows == 2
    history = rows(settings, "SELECT variant_id::text, successes FROM experiment_bandit_history ORDER BY id")
    assert [h[1] for h in history if h[0] == green] == [70, 90]


def test_burn_in_uses_shares_and_paused_arm_gets_nothing(app, settings, create_experiment, redis_client, client, auth):
    experiment = bandit_experiment(
        create_experiment,
        variants=[
            {"name": "A", "traffic_share": 50, "is_control": True},
            {"name": "B", "traffic_share": 30},
            {"name": "C", "traffic_share": 20},
        ],
    )
    a, b, c = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], a, assigned=40, successes=4)
    sira_jobs.recompute_posteriors(redis_client)
    published = json.loads(redis_client.get(f"sira:weights:{experiment['id']}"))
    assert published["burn_in"] is True
    assert published["weights"] == pytest.approx({a: 0.5, b: 0.3, c: 0.2})

    response = client.post(f"/api/experiments/{experiment['id']}/variants/{c}/pause", headers=auth("ops_admin"))
    assert response.status_code == 200, response.get_json()
    # The pause republishes at once: C gets 0, the others share its traffic.
    published = json.loads(redis_client.get(f"sira:weights:{experiment['id']}"))
    assert published["weights"] == pytest.approx({a: 0.5 / 0.8, b: 0.3 / 0.8, c: 0.0})


def test_fixed_split_stores_state_but_publishes_nothing(app, settings, create_experiment, redis_client):
    experiment = create_experiment(start=True)
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=300, successes=30)
    summary = sira_jobs.recompute_posteriors(redis_client)
    assert summary.experiments == 1 and summary.published == 0
    assert redis_client.get(f"sira:weights:{experiment['id']}") is None
    weights = rows(settings, "SELECT weight FROM experiment_bandit_state")
    assert sorted(w[0] for w in weights) == [0.5, 0.5]


def test_new_and_non_running_experiments(app, settings, create_experiment, redis_client):
    brand_new = bandit_experiment(create_experiment, name="New")  # running, nobody assigned yet
    create_experiment(name="Draft")  # never started: ignored
    summary = sira_jobs.recompute_posteriors(redis_client)
    assert summary.experiments == 1 and summary.published == 1 and not summary.errors
    published = json.loads(redis_client.get(f"sira:weights:{brand_new['id']}"))
    assert published["burn_in"] is True and sum(published["weights"].values()) == pytest.approx(1.0)
    scan = sira_scan.fail_fast_scan(redis_client)
    assert scan.experiments == 1 and scan.recommendations == 0 and not scan.errors
    # No running experiment at all.
    db_url = libpq_url(settings.database_url)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE experiments SET status = 'stopped'")
    assert sira_jobs.recompute_posteriors(redis_client).experiments == 0
    assert sira_scan.fail_fast_scan(redis_client).experiments == 0


def losing_experiment(create_experiment, settings, **overrides):
    """Control converts at 10%, the variant at 5%: the sequential rule flags the variant."""
    experiment = create_experiment(start=True, **overrides)
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=3000, successes=300)
    set_arm(settings.database_url, experiment["id"], green, assigned=3000, successes=150)
    return experiment, control, green


def audit_entries(settings, action=None):
    query = "SELECT actor, action, after FROM experiment_audit_logs"
    if action:
        return [r for r in rows(settings, query + " WHERE action = %s ORDER BY id", action)]
    return rows(settings, query + " ORDER BY id")


def test_fail_fast_recommends_once_and_audits_as_sira(app, settings, create_experiment, redis_client, caplog):
    experiment, control, green = losing_experiment(create_experiment, settings, guardrails=[])
    with caplog.at_level("WARNING", logger="sira.notifications"):
        first = sira_scan.fail_fast_scan(redis_client)
    assert first.recommendations == 1 and first.actions_applied == 0
    assert any("SIRA fail_fast" in r.getMessage() and "Green Button" in r.getMessage() for r in caplog.records)
    second = sira_scan.fail_fast_scan(redis_client)
    assert second.recommendations == 0

    recommendations = rows(settings, "SELECT variant_id::text, kind, rule, event_type, action, details FROM sira_recommendations")
    assert len(recommendations) == 1
    variant_id, kind, rule, event_type, action, details = recommendations[0]
    assert (variant_id, kind, rule, event_type, action) == (green, "fail_fast", "sequential", "conversion", "recommend")
    assert details["against_variant_id"] == control and details["lower"] > 0
    assert details["action_outcome"] == "recommendation only"

    entries = audit_entries(settings, "sira_fail_fast")
    assert len(entries) == 1 and entries[0][0] == "sira"
    assert entries[0][2]["variant_id"] == green
    # Recommend only: the experiment is untouched.
    status, = rows(settings, "SELECT status FROM experiments")[0]
    assert status == "running"
    assert rows(settings, "SELECT count(*) FROM experiment_variants WHERE paused")[0][0] == 0


def test_fail_fast_pause_variant_action(app, settings, create_experiment, redis_client):
    experiment, control, green = losing_experiment(
        create_experiment, settings, guardrails=[], fail_fast={"action": "pause_variant"}
    )
    redis_client.set(definition_key(experiment["id"]), b"stale definition")
    summary = sira_scan.fail_fast_scan(redis_client)
    assert summary.recommendations == 1 and summary.actions_applied == 1
    paused = rows(settings, "SELECT id::text, paused, paused_reason FROM experiment_variants WHERE paused")
    assert [p[0] for p in paused] == [green] and "losing" in paused[0][2]
    assert redis_client.get(definition_key(experiment["id"])) is None
    actions = [(e[0], e[1]) for e in audit_entries(settings)]
    assert ("sira", "sira_fail_fast") in actions and ("sira", "pause_variant") in actions
    version, = rows(settings, "SELECT version FROM experiments")[0]
    assert version == experiment["version"] + 1
    # Twice: nothing more happens.
    count = len(audit_entries(settings))
    assert sira_scan.fail_fast_scan(redis_client).recommendations == 0
    assert len(audit_entries(settings)) == count


def test_fail_fast_stop_experiment_action(app, settings, create_experiment, redis_client):
    experiment, control, green = losing_experiment(
        create_experiment, settings, guardrails=[], fail_fast={"action": "stop_experiment", "rule": "bayesian"}
    )
    redis_client.set(definition_key(experiment["id"]), b"stale definition")
    summary = sira_scan.fail_fast_scan(redis_client)
    assert summary.recommendations == 1 and summary.actions_applied == 1
    status, = rows(settings, "SELECT status FROM experiments")[0]
    assert status == "stopped"
    assert redis_client.get(definition_key(experiment["id"])) is None
    rule, details = rows(settings, "SELECT rule, details FROM sira_recommendations")[0]
    assert rule == "bayesian" and details["probability"] > 0.95 and details["action_outcome"] == "experiment stopped"
    assert [e[0] for e in audit_entries(settings, "stop")] == ["sira"]


def test_guardrail_breach_pauses_the_variant_by_default(app, settings, create_experiment, redis_client):
    experiment = create_experiment(start=True)  # guardrails default: fraud_alert, refund; action pause_variant
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=4000, successes=400)
    set_arm(settings.database_url, experiment["id"], green, assigned=4000, successes=410)
    set_rollup(settings.database_url, experiment["id"], control, "refund", users=40)
    set_rollup(settings.database_url, experiment["id"], green, "refund", users=120)
    summary = sira_scan.fail_fast_scan(redis_client)
    assert summary.recommendations == 1 and summary.actions_applied == 1
    kind, event_type, action, details = rows(settings, "SELECT kind, event_type, action, details FROM sira_recommendations")[0]
    assert (kind, event_type, action) == ("guardrail_breach", "refund", "pause_variant")
    assert details["action_outcome"] == "variant paused"
    assert rows(settings, "SELECT id::text FROM experiment_variants WHERE paused")[0][0] == green
    assert [e[0] for e in audit_entries(settings, "sira_guardrail_breach")] == ["sira"]
    assert [e[0] for e in audit_entries(settings, "pause_variant")] == ["sira"]


def test_cannot_pause_the_last_active_arm(app, settings, create_experiment, redis_client):
    """Control flagged while the only other arm is already paused: recorded, not applied."""
    experiment, control, green = losing_experiment(
        create_experiment, settings, guardrails=[], fail_fast={"action": "pause_variant"}
    )
    # Make the control the loser and pause the winner by hand.
    set_rollup(settings.database_url, experiment["id"], control, "conversion", users=100)
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        conn.execute("UPDATE experiment_variants SET paused = true WHERE id = %s", (green,))
    summary = sira_scan.fail_fast_scan(redis_client)
    assert summary.recommendations == 1 and summary.actions_applied == 0 and not summary.errors
    outcome = rows(settings, "SELECT details->>'action_outcome' FROM sira_recommendations")[0][0]
    assert outcome.startswith("not applied: cannot pause the last active variant")


@pytest.mark.slow
def test_concurrent_scans_record_each_finding_once(app, settings, create_experiment, redis_client):
    for n in range(3):
        losing_experiment(create_experiment, settings, name=f"Exp {n}", guardrails=[], fail_fast={"action": "pause_variant"})
    barrier = threading.Barrier(4)
    results = []

    def scan():
        barrier.wait()
        results.append(sira_scan.fail_fast_scan(redis_client))

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.recommendations for r in results) == 3
    assert sum(r.actions_applied for r in results) == 3
    assert rows(settings, "SELECT count(*) FROM sira_recommendations")[0][0] == 3
    assert len(audit_entries(settings, "sira_fail_fast")) == 3
    assert len(audit_entries(settings, "pause_variant")) == 3


def test_job_lock_excludes_a_second_holder(app):
    with sira_jobs.job_lock("sira.fail_fast_scan") as first:
        assert first is True
        with sira_jobs.job_lock("sira.fail_fast_scan") as second:
            assert second is False
        with sira_jobs.job_lock("sira.recompute_posteriors") as other_job:
            assert other_job is True
    with sira_jobs.job_lock("sira.fail_fast_scan") as again:
        assert again is True


def test_recompute_many_experiments_matches_sira(app, settings, create_experiment, redis_client):
    """Several bandit experiments in one pass: every arm's weight equals sira's own computation."""
    rng = np.random.default_rng(3)
    expected = {}
    for n in range(4):
        experiment = bandit_experiment(create_experiment, name=f"Bandit {n}")
        arms = []
        for variant in experiment["variants"]:
            assigned = int(rng.integers(150, 900))
            successes = int(rng.binomial(assigned, 0.1))
            set_arm(settings.database_url, experiment["id"], variant["id"], assigned=assigned, successes=successes)
            arms.append(ProportionStats(assigned, successes))
        result = bandit_weights(arms, [50, 50], [False, False], BanditConfig())
        expected.update({v["id"]: w for v, w in zip(experiment["variants"], result.weights)})
    sira_jobs.recompute_posteriors(redis_client)
    stored = dict(rows(settings, "SELECT variant_id::text, weight FROM experiment_bandit_state"))
    assert stored == pytest.approx(expected, abs=1e-12)


def test_redis_down_state_still_stored_and_pause_retried(app, settings, create_experiment, redis_client):
    """Without Redis the posteriors are still stored; a pause that cannot invalidate the
    cached definition is rolled back (nothing recorded) and applied by the next scan."""
    import redis as redis_lib

    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    experiment, control, green = losing_experiment(
        create_experiment, settings, mode="bandit", guardrails=[], fail_fast={"action": "pause_variant"},
        attribution_window_s=NO_WINDOWS,
    )
    summary = sira_jobs.recompute_posteriors(dead)
    assert summary.arms == 2 and summary.published == 0 and summary.errors
    assert rows(settings, "SELECT count(*) FROM experiment_bandit_state")[0][0] == 2

    scan = sira_scan.fail_fast_scan(dead)
    assert scan.recommendations == 0 and len(scan.errors) == 1 and "cached definition" in scan.errors[0]
    assert rows(settings, "SELECT count(*) FROM sira_recommendations")[0][0] == 0
    assert rows(settings, "SELECT count(*) FROM experiment_variants WHERE paused")[0][0] == 0
    assert audit_entries(settings, "sira_fail_fast") == []

    scan = sira_scan.fail_fast_scan(redis_client)
    assert scan.recommendations == 1 and scan.actions_applied == 1 and not scan.errors
    assert rows(settings, "SELECT id::text FROM experiment_variants WHERE paused")[0][0] == green


@pytest.mark.parametrize("garbage", [b'{"not": "a d7 document"}', b"not json", b'{"computed_at": "x", "variants": {}}'])
def test_malformed_cached_d7_is_recomputed(app, settings, create_experiment, redis_client, client, auth, garbage):
    experiment = create_experiment(start=True)
    redis_client.set(f"sira:d7:{experiment['id']}", garbage)
    response = client.get(f"/api/experiments/{experiment['id']}/results", headers=auth("ops_admin"))
    assert response.status_code == 200
    redis_client.set(f"sira:d7:{experiment['id']}", garbage)
    assert sira_jobs.recompute_posteriors(redis_client).d7_refreshed == 1
    document = json.loads(redis_client.get(f"sira:d7:{experiment['id']}"))
    assert set(document["variants"]) == {v["id"] for v in experiment["variants"]}

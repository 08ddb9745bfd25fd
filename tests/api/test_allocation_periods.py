"""Allocation periods: every assignment records its period and its arm's probability;
results, SRM and the bandit use them."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta

import psycopg
import pytest

from core import db
from core.config import libpq_url as plain_url
from core.redis import get_redis
from services.analysis import jobs as sira_jobs
from services.cache import definition_key, weights_key
from services.experiments import assignment as service
from services.experiments.audit import SIRA_ACTOR
from services.experiments.lifecycle import set_variant_paused
from tests.support.sira_data import NO_WINDOWS, NOW, insert_assignments, insert_events, rebuild_rollups

SERVICE = "pay_module"


def _assign(client, auth, experiment_id, molam_id):
    response = client.post(
        f"/api/experiments/{experiment_id}/assign", json={"molam_id": molam_id}, headers=auth(SERVICE, sub="pay-svc")
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _rows(settings, experiment_id):
    with psycopg.connect(plain_url(settings.database_url)) as conn:
        return conn.execute(
            "SELECT molam_id, variant_id::text, period, probability FROM experiment_assignments "
            "WHERE experiment_id = %s ORDER BY molam_id",
            (experiment_id,),
        ).fetchall()


def _pause(experiment_id, variant_id, settings):
    session = db.new_session()
    set_variant_paused(session, uuid.UUID(experiment_id), uuid.UUID(variant_id), paused=True, actor=SIRA_ACTOR)
    session.commit()
    session.close()
    get_redis(settings.redis_url).delete(definition_key(experiment_id))


def test_fixed_split_rows_record_version_period_and_bucket_probability(client, auth, create_experiment, settings):
    variants = [
        {"name": "A", "traffic_share": 40, "is_control": True},
        {"name": "B", "traffic_share": 30},
        {"name": "C", "traffic_share": 30},
    ]
    experiment = create_experiment(start=True, targeting={}, variants=variants)
    ids = {v["name"]: v["id"] for v in experiment["variants"]}
    for n in range(30):
        _assign(client, auth, experiment["id"], f"before-{n}")
    _pause(experiment["id"], ids["B"], settings)
    for n in range(30):
        _assign(client, auth, experiment["id"], f"after-{n}")
    rows = _rows(settings, experiment["id"])
    probability_before = {ids["A"]: 0.4, ids["B"]: 0.3, ids["C"]: 0.3}
    probability_after = {ids["A"]: 4000 * 10_000 // 7000 / 10_000, ids["C"]: 1 - 4000 * 10_000 // 7000 / 10_000}
    before = [r for r in rows if r[0].startswith("before")]
    after = [r for r in rows if r[0].startswith("after")]
    assert {r[2] for r in before} == {service.period_id(experiment["version"], 0)}
    assert {r[2] for r in after} == {service.period_id(experiment["version"] + 1, 0)}
    assert all(r[3] == pytest.approx(probability_before[r[1]]) for r in before)
    assert all(r[3] == pytest.approx(probability_after[r[1]]) for r in after)

    body = client.get(f"/api/experiments/{experiment['id']}/results", headers=auth("marketing")).get_json()
    assert body["periods"] == 2
    assert body["srm"]["flagged"] is False and body["srm"]["p_value"] is not None


def test_bandit_rows_record_the_published_period_and_weight(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, targeting={}, mode="bandit")
    control, treatment = (v["id"] for v in experiment["variants"])
    redis_client = get_redis(settings.redis_url)
    for n in range(10):
        _assign(client, auth, experiment["id"], f"burn-{n}")
    redis_client.set(
        weights_key(experiment["id"]),
        json.dumps({"weights": {control: 0.25, treatment: 0.75}, "burn_in": False, "period": 7}),
    )
    for n in range(40):
        _assign(client, auth, experiment["id"], f"seven-{n}")
    rows = _rows(settings, experiment["id"])
    burn = [r for r in rows if r[0].startswith("burn")]
    seven = [r for r in rows if r[0].startswith("seven")]
    assert {r[2] for r in burn} == {service.period_id(experiment["version"], 0)}
    assert all(r[3] == pytest.approx(0.5) for r in burn)
    assert {r[2] for r in seven} == {service.period_id(experiment["version"], 7)}
    assert all(r[3] == pytest.approx(0.25 if r[1] == control else 0.75) for r in seven)


def test_republishing_opens_a_period_only_when_weights_move(app, create_experiment, settings):
    experiment = create_experiment(start=True, mode="bandit", guardrails=[], attribution_window_s=NO_WINDOWS)
    control, treatment = (v["id"] for v in experiment["variants"])
    redis_client = get_redis(settings.redis_url)
    rows = [{"variant_id": v, "molam_id": f"{v[:6]}-{n}"} for v in (control, treatment) for n in range(400)]
    events = [{"variant_id": r["variant_id"], "molam_id": r["molam_id"], "event_type": "conversion"}
              for i, r in enumerate(rows) if i % 10 == 0]
    with psycopg.connect(plain_url(settings.database_url)) as conn:
        insert_assignments(conn, experiment["id"], rows)
        insert_events(conn, experiment["id"], events)
        rebuild_rollups(conn, experiment["id"])
    sira_jobs.recompute_posteriors(redis_client)
    first = json.loads(redis_client.get(weights_key(experiment["id"])))
    assert first["period"] == 1 and first["burn_in"] is False
    sira_jobs.recompute_posteriors(redis_client)  # same data: same weights, same period
    assert json.loads(redis_client.get(weights_key(experiment["id"])))["period"] == 1
    more = [{"variant_id": treatment, "molam_id": f"late-{n}", "event_type": "conversion"} for n in range(60)]
    with psycopg.connect(plain_url(settings.database_url)) as conn:
        insert_assignments(conn, experiment["id"], [{"variant_id": treatment, "molam_id": r["molam_id"]} for r in more])
        insert_events(conn, experiment["id"], more)
        rebuild_rollups(conn, experiment["id"])
    sira_jobs.recompute_posteriors(redis_client)
    moved = json.loads(redis_client.get(weights_key(experiment["id"])))
    assert moved["period"] == 2 and moved["weights"][treatment] > first["weights"][treatment]


def test_bandit_decides_on_matured_users_within_the_window(client, auth, create_experiment, settings):
    experiment = create_experiment(
        start=True, mode="bandit", guardrails=[], attribution_window_s={"conversion": 600}
    )
    control, treatment = (v["id"] for v in experiment["variants"])
    old = NOW - timedelta(hours=2)
    rows = [
        {"variant_id": v, "molam_id": f"{name}-{n}", "assigned_at": old if name.startswith("old") else NOW}
        for v, name in ((control, "old-c"), (treatment, "old-t"), (control, "new-c"), (treatment, "new-t"))
        for n in range(200)
    ]
    events = []
    for r in rows:
        n = int(r["molam_id"].rsplit("-", 1)[1])
        if r["molam_id"].startswith("old") and n < 20:
            events.append({**r, "event_type": "conversion", "occurred_at": r["assigned_at"] + timedelta(minutes=5)})
        if r["molam_id"].startswith("old-t") and 20 <= n < 60:  # converted after the window: not counted
            events.append({**r, "event_type": "conversion", "occurred_at": r["assigned_at"] + timedelta(minutes=30)})
    with psycopg.connect(plain_url(settings.database_url)) as conn:
        insert_assignments(conn, experiment["id"], rows)
        insert_events(conn, experiment["id"], [{k: v for k, v in e.items() if k != "assigned_at"} for e in events])
        rebuild_rollups(conn, experiment["id"])
    body = client.get(f"/api/experiments/{experiment['id']}/results", headers=auth("marketing")).get_json()
    assert body["attribution_window_s"]["conversion"] == 600
    assert body["attribution_window_s"]["refund"] == 3600  # the bandit default
    control_block, treatment_block = (v["metrics"]["conversion"] for v in body["variants"])
    assert control_block["matured_users"] == 200 and treatment_block["matured_users"] == 200
    # within-window conversions only: 20 of 400 users in each arm
    assert control_block["rate"] == pytest.approx(0.05) and treatment_block["rate"] == pytest.approx(0.05)
    # the posterior counts matured users only (200 per arm, 20 successes)
    assert [v["alpha"] for v in body["variants"]] == [21.0, 21.0]
    assert [v["beta"] for v in body["variants"]] == [181.0, 181.0]


def test_create_and_show_windows_and_margin(client, auth):
    body = {
        "name": "Windows",
        "variants": [{"name": "A", "traffic_share": 50, "is_control": True}, {"name": "B", "traffic_share": 50}],
        "mode": "bandit",
        "attribution_window_s": {"conversion": 7200, "click": None},
        "guardrail_margin": 0.2,
    }
    created = client.post("/api/experiments", json=body, headers=auth("ops_admin"))
    assert created.status_code == 201, created.get_json()
    experiment = created.get_json()
    assert experiment["attribution_window_s"]["conversion"] == 7200
    assert experiment["attribution_window_s"]["click"] is None
    assert experiment["attribution_window_s"]["refund"] == 3600
    assert experiment["guardrail_margin"] == 0.2
    patched = client.patch(
        f"/api/experiments/{experiment['id']}", json={"guardrail_margin": 0.05}, headers=auth("ops_admin")
    )
    assert patched.status_code == 200 and patched.get_json()["guardrail_margin"] == 0.05
    ab = client.post("/api/experiments", json={**body, "mode": "ab", "attribution_window_s": None}, headers=auth())
    assert ab.status_code == 201 and set(ab.get_json()["attribution_window_s"].values()) == {None}


@pytest.mark.parametrize(
    "field, value",
    [
        ("attribution_window_s", {"purchase": 60}),
        ("attribution_window_s", {"conversion": -1}),
        ("attribution_window_s", {"conversion": "soon"}),
        ("attribution_window_s", [60]),
        ("guardrail_margin", -0.1),
        ("guardrail_margin", "wide"),
    ],
)
def test_bad_windows_and_margins_are_422_naming_the_field(client, auth, field, value):
    body = {
        "name": "Bad",
        "variants": [{"name": "A", "traffic_share": 50, "is_control": True}, {"name": "B", "traffic_share": 50}],
        field: value,
    }
    response = client.post("/api/experiments", json=body, headers=auth("ops_admin"))
    assert response.status_code == 422, response.get_json()
    assert field in json.dumps(response.get_json())

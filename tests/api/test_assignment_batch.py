"""POST /api/assignments/batch: recomputed, stored like assign, idempotent, race-safe, per-item verdicts."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import psycopg
import pytest

from core.config import libpq_url
from services.experiments import assignment
from services.experiments.buckets import split_bucket
from services.experiments.definitions import get_definition

SERVICE = "pay_module"
NOW = datetime.now(timezone.utc).isoformat()


def _expected_variant(settings, experiment_id, molam_id):
    from core.redis import get_redis

    definition = get_definition(get_redis(settings.redis_url), experiment_id)
    return assignment.variant_for_bucket(definition, split_bucket(experiment_id, molam_id)).id


def _post(client, auth, exposures, role=SERVICE):
    return client.post("/api/assignments/batch", json={"exposures": exposures}, headers=auth(role))


def _rows(settings, experiment_id):
    plain = libpq_url(settings.database_url)
    with psycopg.connect(plain) as conn:
        return dict(
            conn.execute(
                "SELECT molam_id, variant_id::text FROM experiment_assignments WHERE experiment_id = %s", (experiment_id,)
            ).fetchall()
        )


@pytest.fixture
def running(create_experiment):
    return create_experiment(start=True, targeting={"country": ["SN"]})


def _exposure(experiment, molam_id, variant_id, **context):
    return {"experiment_id": experiment["id"], "molam_id": molam_id, "variant_id": variant_id,
            "evaluated_at": NOW, "country": "SN", **context}


def test_matching_exposures_are_stored_like_assign(client, auth, settings, running):
    exposures = [
        _exposure(running, f"user-{i}", _expected_variant(settings, running["id"], f"user-{i}")) for i in range(50)
    ]
    response = _post(client, auth, exposures)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["rejected"] == []
    assert [a["index"] for a in body["accepted"]] == list(range(50))
    assert all(a["new"] for a in body["accepted"])
    assert _rows(settings, running["id"]) == {e["molam_id"]: e["variant_id"] for e in exposures}
    # assign now answers the stored row, from the cache the batch filled
    answer = client.post(f"/api/experiments/{running['id']}/assign", json={"molam_id": "user-3", "country": "SN"},
                         headers=auth(SERVICE)).get_json()
    assert answer["variant_id"] == exposures[3]["variant_id"] and answer["new"] is False
    # results count them
    results = client.get(f"/api/experiments/{running['id']}/results", headers=auth("ops_admin")).get_json()
    counts = {v["variant_id"]: v["assigned_users"] for v in results["variants"]}
    assert counts == {v["id"]: sum(e["variant_id"] == v["id"] for e in exposures) for v in running["variants"]}
    assert results["srm"]["p_value"] is not None


def test_replay_is_idempotent(client, auth, settings, running):
    exposures = [_exposure(running, f"u{i}", _expected_variant(settings, running["id"], f"u{i}")) for i in range(10)]
    _post(client, auth, exposures)
    again = _post(client, auth, exposures + exposures).get_json()
    assert again["rejected"] == [] and len(again["accepted"]) == 20
    assert not any(a["new"] for a in again["accepted"])
    assert len(_rows(settings, running["id"])) == 10


def test_mismatches_are_rejected_per_item_with_a_reason(client, auth, settings, running, create_experiment):
    a, b = (v["id"] for v in running["variants"])
    right = _expected_variant(settings, running["id"], "good")
    wrong = b if _expected_variant(settings, running["id"], "bad") == a else a
    draft = create_experiment(name="draft")
    exposures = [
        _exposure(running, "good", right),
        _exposure(running, "bad", wrong),
        _exposure(running, "abroad", right, country="FR"),
        _exposure(running, "nocountry", right, country=None),
        {"experiment_id": draft["id"], "molam_id": "x", "variant_id": draft["variants"][0]["id"], "evaluated_at": NOW},
        {"experiment_id": "00000000-0000-0000-0000-000000000000", "molam_id": "x", "variant_id": a, "evaluated_at": NOW},
        _exposure(running, "alien", draft["variants"][0]["id"]),
        {"experiment_id": running["id"], "molam_id": "", "variant_id": a},
        "not an object",
    ]
    exposures[3].pop("country")
    body = _post(client, auth, exposures).get_json()
    assert [x["index"] for x in body["accepted"]] == [0]
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert reasons == {
        1: "variant_mismatch", 2: "country_not_targeted", 3: "country_missing", 4: "not_running",
        5: "unknown_experiment", 6: "unknown_variant", 7: "invalid", 8: "invalid",
    }
    mismatch = next(r for r in body["rejected"] if r["index"] == 1)
    assert mismatch["expected_variant_id"] == _expected_variant(settings, running["id"], "bad")
    invalid = next(r for r in body["rejected"] if r["index"] == 7)
    assert set(invalid["errors"]) == {"molam_id", "evaluated_at"}
    assert _rows(settings, running["id"]) == {"good": right}


def test_first_writer_wins_against_a_stored_assignment(client, auth, settings, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    a, b = (v["id"] for v in experiment["variants"])
    first = client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "m"}, headers=auth(SERVICE)).get_json()
    other = b if first["variant_id"] == a else a
    body = _post(client, auth, [_exposure(experiment, "m", other), _exposure(experiment, "m", first["variant_id"])]).get_json()
    assert body["accepted"] == [{"index": 1, "experiment_id": experiment["id"], "molam_id": "m",
                                 "variant_id": first["variant_id"], "new": False}]
    assert body["rejected"][0]["reason"] == "conflicts_with_stored"
    assert body["rejected"][0]["stored_variant_id"] == first["variant_id"]


def test_paused_arm_and_bandit_are_rejected(client, auth, settings, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    a, b = (v["id"] for v in experiment["variants"])
    users = [f"p{i}" for i in range(40)]
    in_b = [u for u in users if _expected_variant(settings, experiment["id"], u) == b]
    client.post(f"/api/experiments/{experiment['id']}/variants/{b}/pause", headers=auth("ops_admin"))
    body = _post(client, auth, [_exposure(experiment, u, b) for u in in_b]).get_json()
    assert {r["reason"] for r in body["rejected"]} == {"variant_mismatch"}
    assert {r["expected_variant_id"] for r in body["rejected"]} == {a}
    bandit = create_experiment(start=True, mode="bandit", targeting={}, name="bandit")
    body = _post(client, auth, [_exposure(bandit, "z", bandit["variants"][0]["id"])]).get_json()
    assert body["rejected"][0]["reason"] == "not_fixed_split"


def test_concurrent_batches_and_assigns_store_one_row_each(app, auth, settings, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    users = [f"race-{i}" for i in range(200)]
    exposures = [_exposure(experiment, u, _expected_variant(settings, experiment["id"], u)) for u in users]
    headers = auth(SERVICE)
    results, errors = [], []

    def batch(items):
        try:
            results.append(app.test_client().post("/api/assignments/batch", json={"exposures": items}, headers=headers))
        except Exception as exc:
            errors.append(exc)

    def assign_all():
        client = app.test_client()
        for user in reversed(users):
            response = client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": user}, headers=headers)
            results.append(response)

    threads = [threading.Thread(target=batch, args=(exposures,)), threading.Thread(target=batch, args=(exposures[::-1],)),
               threading.Thread(target=assign_all)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and all(r.status_code == 200 for r in results)
    assert _rows(settings, experiment["id"]) == {e["molam_id"]: e["variant_id"] for e in exposures}
    batches = [r.get_json() for r in results if "accepted" in r.get_json()]
    assert all(b["rejected"] == [] for b in batches)
    # every user was recorded as new exactly once, by whichever writer came first
    new_in_batches = sum(a["new"] for b in batches for a in b["accepted"])
    new_in_assigns = sum(r.get_json().get("new", False) for r in results if "accepted" not in r.get_json())
    assert new_in_batches + new_in_assigns == len(users)


def test_body_errors_and_roles(client, auth, running):
    assert _post(client, auth, []).status_code == 422
    assert _post(client, auth, [{}] * 1001).status_code == 422
    assert client.post("/api/assignments/batch", json=[1], headers=auth(SERVICE)).status_code == 422
    assert client.post("/api/assignments/batch", json={"exposures": [{}], "x": 1}, headers=auth(SERVICE)).status_code == 422
    assert client.post("/api/assignments/batch", data="{", headers={**auth(SERVICE), "Content-Type": "application/json"}).status_code == 400
    for role in ("ops_admin", "marketing", "data_science"):
        assert _post(client, auth, [{}], role=role).status_code == 403
    assert client.post("/api/assignments/batch", json={"exposures": [{}]}).status_code == 401

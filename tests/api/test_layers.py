"""Layers over HTTP: mutual exclusion across thousands of users, and range accounting."""
from __future__ import annotations

import time

import pytest

from core.redis import get_redis
from services.experiments.buckets import layer_bucket

SERVICE = "pay_module"
USERS = 2000


@pytest.fixture
def layer(client, auth):
    response = client.post("/api/layers", json={"name": "checkout", "description": "checkout page"}, headers=auth("ops_admin"))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def in_layer(client, auth, create_experiment, layer):
    def create(allocation, start=False, **overrides):
        return create_experiment(
            start=start, targeting={}, layer_id=layer["id"], layer_allocation=allocation, **overrides
        )

    return create


def _assign(client, headers, experiment_id, molam_id):
    """POST assign as a service would: a 503 (a dependency briefly unavailable) is retried after Retry-After."""
    for _ in range(5):
        response = client.post(f"/api/experiments/{experiment_id}/assign", json={"molam_id": molam_id}, headers=headers)
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")))
    assert response.status_code == 200, (response.status_code, response.get_json())
    return response.get_json()


def _start(client, auth, experiment_id):
    return client.post(f"/api/experiments/{experiment_id}/start", headers=auth("ops_admin"))


def _stop(client, auth, experiment_id):
    return client.post(f"/api/experiments/{experiment_id}/stop", headers=auth("ops_admin"))


def _layer(client, auth, layer_id):
    response = client.get(f"/api/layers/{layer_id}", headers=auth("data_science"))
    assert response.status_code == 200
    return response.get_json()


def test_create_list_get_and_unique_names(client, auth, layer):
    assert layer["name"] == "checkout" and layer["buckets"] == 10_000
    assert layer["free_percent"] == 100 and layer["ranges"] == [] and layer["free_ranges"] == [{"start": 0, "end": 10_000}]
    again = client.post("/api/layers", json={"name": "checkout"}, headers=auth("marketing"))
    assert again.status_code == 409
    listed = client.get("/api/layers", headers=auth("marketing")).get_json()
    assert [l["id"] for l in listed] == [layer["id"]]
    assert client.get(f"/api/layers/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=auth()).status_code == 404
    bad = client.post("/api/layers", json={"name": ""}, headers=auth())
    assert bad.status_code == 422 and "name" in bad.get_json()["errors"]["json"]
    audit = client.get("/api/audit", headers=auth()).get_json()
    assert any(entry["action"] == "create_layer" for entry in audit)


def test_layer_fields_are_validated(client, auth, create_experiment, layer):
    from tests.conftest import experiment_body

    cases = [
        ({"layer_id": "7c6f0b2e-0000-4000-8000-000000000000", "layer_allocation": 10}, "layer_id"),
        ({"layer_id": layer["id"]}, "layer_allocation"),
        ({"layer_allocation": 10}, "layer_allocation"),
        ({"layer_id": layer["id"], "layer_allocation": 0}, "layer_allocation"),
        ({"layer_id": layer["id"], "layer_allocation": 100.5}, "layer_allocation"),
        ({"layer_id": "not-a-uuid", "layer_allocation": 10}, "layer_id"),
    ]
    for fields, name in cases:
        response = client.post("/api/experiments", json=experiment_body(**fields), headers=auth())
        assert response.status_code == 422, (fields, response.get_json())
        assert name in response.get_json()["errors"]["json"], (fields, response.get_json())


def test_start_claims_a_range_and_refuses_what_does_not_fit(client, auth, in_layer, layer):
    a = in_layer(40, start=True)
    b = in_layer(60, start=True)
    assert a["layer_range"] == {"start": 0, "end": 4000}
    assert b["layer_range"] == {"start": 4000, "end": 10_000}
    c = in_layer(10)
    refused = _start(client, auth, c["id"])
    assert refused.status_code == 409
    assert "0% free" in refused.get_json()["message"] and "needs 10%" in refused.get_json()["message"]
    assert refused.get_json()["errors"]["layer"]["free_percent"] == 0

    assert _stop(client, auth, a["id"]).get_json()["layer_range"] is None
    assert _layer(client, auth, layer["id"])["free_percent"] == 40
    started = _start(client, auth, c["id"]).get_json()
    assert started["layer_range"] == {"start": 0, "end": 1000}
    # 30 % is left, in one piece: a 40 % experiment does not fit, and is told so.
    d = in_layer(40)
    refused = _start(client, auth, d["id"])
    assert refused.status_code == 409 and "30% free" in refused.get_json()["message"]
    restarted = _start(client, auth, a["id"])
    assert restarted.status_code == 409 and "needs 40%" in restarted.get_json()["message"]
    e = in_layer(30, start=True)
    assert e["layer_range"] == {"start": 1000, "end": 4000}

    usage = _layer(client, auth, layer["id"])
    assert usage["free_percent"] == 0 and usage["largest_free_percent"] == 0
    assert [(r["start"], r["end"]) for r in usage["ranges"]] == [(0, 1000), (1000, 4000), (4000, 10_000)]
    assert {x["status"] for x in usage["experiments"]} == {"running", "stopped", "draft"}

    # Archive releases too; ranges of running experiments never overlap (also a DB constraint).
    _stop(client, auth, e["id"])
    client.post(f"/api/experiments/{e['id']}/archive", headers=auth())
    assert _layer(client, auth, layer["id"])["free_percent"] == 30
    assert _start(client, auth, a["id"]).status_code == 409
    d2 = in_layer(30, start=True)
    assert d2["layer_range"] == {"start": 1000, "end": 4000}


def test_a_user_is_in_at_most_one_running_experiment_of_a_layer(client, auth, in_layer, layer):
    headers = auth(SERVICE, sub="pay-svc")
    experiments = [in_layer(share, start=True) for share in (25, 35, 20)]
    ranges = [(e["layer_range"]["start"], e["layer_range"]["end"]) for e in experiments]
    enrolled_counts = [0, 0, 0]
    nowhere = 0
    for n in range(USERS):
        molam_id = f"layer-user-{n}"
        bucket = layer_bucket(layer["id"], molam_id)
        enrolled = []
        for index, experiment in enumerate(experiments):
            body = _assign(client, headers, experiment["id"], molam_id)
            inside = ranges[index][0] <= bucket < ranges[index][1]
            if body["eligible"]:
                enrolled.append(index)
                assert inside
            else:
                assert body["reason"] == "layer" and not inside
        assert len(enrolled) <= 1
        if enrolled:
            enrolled_counts[enrolled[0]] += 1
        else:
            nowhere += 1
            assert bucket >= 8000
    # The shares of users follow the allocations (binomial, 5 standard errors).
    for count, share in zip(enrolled_counts + [nowhere], (0.25, 0.35, 0.20, 0.20)):
        assert abs(count / USERS - share) < 5 * (share * (1 - share) / USERS) ** 0.5, (enrolled_counts, nowhere)


def test_returning_users_follow_the_new_range_after_a_restart(client, auth, in_layer, layer, settings):
    headers = auth(SERVICE, sub="pay-svc")
    blocker = in_layer(10, start=True)          # [0, 1000)
    a = in_layer(30, start=True)                # [1000, 4000)
    users = [f"sticky-{n}" for n in range(600)]
    assigned = [
        m for m in users
        if _assign(client, headers, a["id"], m)["eligible"]
    ]
    assert assigned and all(1000 <= layer_bucket(layer["id"], m) < 4000 for m in assigned)
    _stop(client, auth, a["id"])
    _stop(client, auth, blocker["id"])
    b = in_layer(20, start=True)                # takes [0, 2000): overlaps a's old range
    restarted = _start(client, auth, a["id"]).get_json()
    assert restarted["layer_range"] == {"start": 2000, "end": 5000}
    for molam_id in assigned:
        bucket = layer_bucket(layer["id"], molam_id)
        for _ in range(2):  # the second answer comes from the cache
            body = _assign(client, headers, a["id"], molam_id)
            assert body["eligible"] is (2000 <= bucket < 5000)
            if not body["eligible"]:
                assert body["reason"] == "layer"
            other = _assign(client, headers, b["id"], molam_id)
            assert not (body["eligible"] and other["eligible"])


def test_the_cached_definition_carries_the_range(client, auth, in_layer, layer, settings):
    import json

    from services.cache import definition_key

    a = in_layer(50, start=True)
    client.post(f"/api/experiments/{a['id']}/assign", json={"molam_id": "u1"}, headers=auth(SERVICE))
    document = json.loads(get_redis(settings.redis_url).get(definition_key(a["id"])))
    assert document["layer"] == {"id": layer["id"], "start": 0, "end": 5000}


def test_experiments_can_be_listed_by_layer(client, auth, in_layer, create_experiment, layer):
    inside = in_layer(10)
    create_experiment()
    listed = client.get(f"/api/experiments?layer_id={layer['id']}", headers=auth()).get_json()
    assert [e["id"] for e in listed] == [inside["id"]]
    assert client.get("/api/experiments?layer_id=nope", headers=auth()).status_code == 422


def test_the_database_refuses_overlapping_ranges_whoever_writes_them(client, auth, in_layer, layer, settings):
    import psycopg

    from core.config import libpq_url

    first, second = in_layer(30, start=True), in_layer(30, start=True)
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        start, end = conn.execute(
            "SELECT layer_range_start, layer_range_end FROM experiments WHERE id = %s", (first["id"],)
        ).fetchone()
        with pytest.raises(psycopg.errors.ExclusionViolation):
            conn.execute(
                "UPDATE experiments SET layer_range_start = %s, layer_range_end = %s WHERE id = %s",
                (start, end, second["id"]),
            )

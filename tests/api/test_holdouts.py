"""Holdouts over HTTP: membership consistent across experiments and over time; events and results."""
from __future__ import annotations

import time

import psycopg
import pytest

from core.redis import get_redis
from services.experiments.buckets import holdout_bucket
from tests.support.ingestion import drain_all

SERVICE = "pay_module"
USERS = 400


@pytest.fixture
def holdout(client, auth):
    response = client.post(
        "/api/holdouts", json={"name": "2027 long-term", "percent": 20, "description": "a year out"}, headers=auth("data_science")
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _assign(client, headers, experiment_id, molam_id):
    """POST assign as a service would: a 503 (a dependency briefly unavailable) is retried after Retry-After."""
    for _ in range(5):
        response = client.post(f"/api/experiments/{experiment_id}/assign", json={"molam_id": molam_id}, headers=headers)
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")))
    assert response.status_code == 200, (response.status_code, response.get_json())
    return response.get_json()


def _members(settings, holdout_id):
    with psycopg.connect(settings.database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return dict(
            conn.execute(
                "SELECT molam_id, first_experiment_id::text FROM experiment_holdout_members WHERE holdout_id = %s", (holdout_id,)
            ).fetchall()
        )


def test_create_validate_and_list(client, auth, holdout, create_experiment):
    from tests.conftest import experiment_body

    assert holdout["percent"] == 20 and holdout["members"] == 0 and holdout["experiment_ids"] == []
    for body, field in [
        ({"name": "x", "percent": 0}, "percent"),
        ({"name": "x", "percent": 60}, "percent"),
        ({"name": "x"}, "percent"),
        ({"percent": 5}, "name"),
        ({"name": "x", "percent": "many"}, "percent"),
    ]:
        response = client.post("/api/holdouts", json=body, headers=auth())
        assert response.status_code == 422 and field in response.get_json()["errors"]["json"], body
    assert client.post("/api/holdouts", json={"name": "2027 long-term", "percent": 5}, headers=auth()).status_code == 409
    unknown = client.post(
        "/api/experiments", json=experiment_body(holdout_ids=["7c6f0b2e-0000-4000-8000-000000000000"]), headers=auth()
    )
    assert unknown.status_code == 422 and "holdout_ids" in unknown.get_json()["errors"]["json"]
    experiment = create_experiment(holdout_ids=[holdout["id"]])
    assert experiment["holdout_ids"] == [holdout["id"]]
    listed = client.get("/api/holdouts", headers=auth("marketing")).get_json()
    assert listed[0]["experiment_ids"] == [experiment["id"]]


def test_membership_is_the_same_for_every_experiment_and_over_time(client, auth, holdout, create_experiment, settings):
    headers = auth(SERVICE, sub="pay-svc")
    first = create_experiment(start=True, targeting={}, holdout_ids=[holdout["id"]])
    second = create_experiment(start=True, targeting={}, holdout_ids=[holdout["id"]])
    unrelated = create_experiment(start=True, targeting={})
    held = set()
    for n in range(USERS):
        molam_id = f"h-{n}"
        expected = holdout_bucket(holdout["id"], molam_id) < 2000
        a = _assign(client, headers, first["id"], molam_id)
        b = _assign(client, headers, second["id"], molam_id)
        c = _assign(client, headers, unrelated["id"], molam_id)
        assert c["eligible"] is True
        for answer in (a, b):
            assert answer["eligible"] is (not expected)
            if expected:
                assert answer["reason"] == "holdout" and answer["variant_id"] is None
        if expected:
            held.add(molam_id)
    assert abs(len(held) / USERS - 0.2) < 5 * (0.2 * 0.8 / USERS) ** 0.5
    members = _members(settings, holdout["id"])
    assert set(members) == held
    # Recorded once, by the experiment that asked first.
    assert set(members.values()) == {first["id"]}
    # Over time: from the cache, and again from PostgreSQL after the cache is gone.
    for _ in range(2):
        for molam_id in list(held)[:50]:
            assert _assign(client, headers, second["id"], molam_id)["reason"] == "holdout"
        get_redis(settings.redis_url).flushdb()
    assert set(_members(settings, holdout["id"])) == held
    assert client.get(f"/api/holdouts/{holdout['id']}", headers=auth()).get_json()["members"] == len(held)


def test_events_of_members_are_accepted_and_counted_in_the_results(client, auth, holdout, create_experiment, settings):
    headers = auth(SERVICE, sub="pay-svc")
    experiment = create_experiment(start=True, targeting={}, holdout_ids=[holdout["id"]])
    members, enrolled = [], []
    for n in range(USERS):
        molam_id = f"r-{n}"
        (enrolled if _assign(client, headers, experiment["id"], molam_id)["eligible"] else members).append(molam_id)
    # Half the members convert, a quarter of the enrolled users do (and spend 10 each).
    for molam_id in members[::2]:
        response = client.post(
            f"/api/experiments/{experiment['id']}/track",
            json={"molam_id": molam_id, "event_type": "conversion", "value": 4.0, "event_id": f"ev-{molam_id}"},
            headers=headers,
        )
        assert response.status_code == 202 and response.get_json()["status"] == "holdout"
    # The same event sent again counts once; a holdout member naming a variant is refused.
    again = client.post(
        f"/api/experiments/{experiment['id']}/track",
        json={"molam_id": members[0], "event_type": "conversion", "value": 4.0, "event_id": f"ev-{members[0]}"},
        headers=headers,
    )
    assert again.status_code == 202
    wrong = client.post(
        f"/api/experiments/{experiment['id']}/track",
        json={"molam_id": members[1], "event_type": "conversion", "variant_id": experiment["variants"][0]["id"]},
        headers=headers,
    )
    assert wrong.status_code == 422
    batch = client.post(
        "/api/events/batch",
        json={"events": [{"experiment_id": experiment["id"], "molam_id": m, "event_type": "click"} for m in members[:3]]
              + [{"experiment_id": experiment["id"], "molam_id": "never-asked", "event_type": "click"}]},
        headers=headers,
    )
    assert batch.status_code == 202 and len(batch.get_json()["accepted"]) == 3 and batch.get_json()["rejected"][0]["index"] == 3
    for molam_id in enrolled[::4]:
        assert client.post(
            f"/api/experiments/{experiment['id']}/track",
            json={"molam_id": molam_id, "event_type": "conversion", "value": 10.0},
            headers=headers,
        ).status_code == 202
    drain_all(get_redis(settings.redis_url))

    results = client.get(f"/api/holdouts/{holdout['id']}/results", headers=auth("marketing"))
    assert results.status_code == 200
    body = results.get_json()
    assert body["members"] == len(members) and body["enrolled_users"] == len(enrolled)
    conversion = body["metrics"]["conversion"]
    held_converted = len(members[::2])
    assert conversion["holdout"]["users"] == len(members)
    assert conversion["holdout"]["rate"] == pytest.approx(held_converted / len(members))
    assert conversion["holdout"]["events"] == held_converted
    assert conversion["holdout"]["value_mean"] == pytest.approx(4.0 * held_converted / len(members))
    assert conversion["enrolled"]["rate"] == pytest.approx(len(enrolled[::4]) / len(enrolled))
    assert conversion["enrolled"]["value_mean"] == pytest.approx(10.0 * len(enrolled[::4]) / len(enrolled))
    # The same intervals as experiment results: Wilson for rates, t for value means.
    from sira.stats import wilson_interval

    wilson = wilson_interval(held_converted, len(members))
    assert conversion["holdout"]["interval"] == pytest.approx({"lower": wilson.lower, "upper": wilson.upper})
    assert conversion["uplift"]["estimate"] == pytest.approx(conversion["enrolled"]["rate"] / conversion["holdout"]["rate"] - 1)
    assert conversion["uplift"]["lower"] < conversion["uplift"]["estimate"] < conversion["uplift"]["upper"]
    assert body["metrics"]["click"]["holdout"]["events"] == 3
    assert set(body["metrics"]) >= {"conversion", "refund", "churn", "fraud_alert", "click", "view"}


def test_holdout_percent_is_immutable(settings, holdout):
    plain = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE experiment_holdouts SET percent = 30 WHERE id = %s", (holdout["id"],))


def test_results_of_an_empty_holdout(client, auth, holdout):
    body = client.get(f"/api/holdouts/{holdout['id']}/results", headers=auth()).get_json()
    assert body["members"] == 0 and body["metrics"]["conversion"]["holdout"]["rate"] == 0
    assert client.get("/api/holdouts/7c6f0b2e-0000-4000-8000-000000000000/results", headers=auth()).status_code == 404

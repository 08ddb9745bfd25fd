"""An experiment's ``allowed_services``: validated, audited, and enforced on every service path."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from core.redis import get_redis
from services.cache import definition_key
from services.ingestion import staging as ingestion
from tests.support.api import experiment_body
from tests.support.ingestion import assign_users
from tests.support.redis_monitor import client_commands

PAY, CONNECT = "pay_module", "connect_module"


@pytest.fixture
def pay_only(create_experiment, settings):
    """A running experiment only pay_module may use; users u1..u4 hold assignments."""
    experiment = create_experiment(start=True, targeting={}, allowed_services=[PAY])
    held = assign_users(settings, experiment, ["u1", "u2", "u3", "u4"])
    return experiment, held


def _create(client, auth, **overrides):
    return client.post("/api/experiments", json=experiment_body(**overrides), headers=auth("ops_admin"))


# --- the field -------------------------------------------------------------------------


def test_default_is_every_service_and_the_field_is_shown(client, auth):
    created = _create(client, auth)
    assert created.status_code == 201 and created.get_json()["allowed_services"] is None
    limited = _create(client, auth, allowed_services=[PAY, CONNECT])
    assert limited.status_code == 201 and limited.get_json()["allowed_services"] == [PAY, CONNECT]
    fetched = client.get(f"/api/experiments/{limited.get_json()['id']}", headers=auth("ops_admin")).get_json()
    assert fetched["allowed_services"] == [PAY, CONNECT]


@pytest.mark.parametrize(
    "value",
    [["ops_admin"], ["marketing"], ["_module"], ["Pay_module"], ["pay module"], [PAY, PAY], "pay_module", [1], [None]],
)
def test_unknown_roles_are_a_422_naming_the_field(client, auth, value, settings):
    response = _create(client, auth, allowed_services=value)
    assert response.status_code == 422, value
    body = response.get_json()
    assert "allowed_services" in body["errors"]["json"] and "allowed_services" in body["message"]
    listed = client.get("/api/experiments", headers=auth("ops_admin")).get_json()
    assert listed == []  # nothing stored


def test_draft_update_sets_it_with_an_audit_entry_and_running_refuses(client, auth):
    experiment = _create(client, auth).get_json()
    changed = client.patch(f"/api/experiments/{experiment['id']}", json={"allowed_services": [CONNECT]}, headers=auth("ops_admin"))
    assert changed.status_code == 200 and changed.get_json()["allowed_services"] == [CONNECT]
    bad = client.patch(f"/api/experiments/{experiment['id']}", json={"allowed_services": ["data_science"]}, headers=auth("ops_admin"))
    assert bad.status_code == 422 and "allowed_services" in bad.get_json()["errors"]["json"]
    audit = client.get(f"/api/audit?experiment_id={experiment['id']}", headers=auth("ops_admin")).get_json()
    update = next(e for e in audit if e["action"] == "update")
    assert update["before"]["allowed_services"] is None and update["after"]["allowed_services"] == [CONNECT]
    cleared = client.patch(f"/api/experiments/{experiment['id']}", json={"allowed_services": None}, headers=auth("ops_admin"))
    assert cleared.status_code == 200 and cleared.get_json()["allowed_services"] is None
    client.post(f"/api/experiments/{experiment['id']}/start", headers=auth("ops_admin"))
    frozen = client.patch(f"/api/experiments/{experiment['id']}", json={"allowed_services": [PAY]}, headers=auth("ops_admin"))
    assert frozen.status_code == 409


def test_the_cached_definition_carries_it(client, auth, pay_only, settings):
    experiment, _ = pay_only
    assert client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "x1"}, headers=auth(PAY)).status_code == 200
    cached = json.loads(get_redis(settings.redis_url).get(definition_key(experiment["id"])))
    assert cached["allowed_services"] == [PAY]


# --- assign ----------------------------------------------------------------------------


def test_assign_is_403_for_a_service_left_out(client, auth, pay_only):
    experiment, held = pay_only
    url = f"/api/experiments/{experiment['id']}"
    for cold in (True, False):  # definition from PostgreSQL, then from the cache
        refused = client.post(f"{url}/assign", json={"molam_id": f"new-{cold}"}, headers=auth(CONNECT))
        assert refused.status_code == 403, refused.get_json()
        assert refused.get_json()["code"] == 403 and "connect_module" in refused.get_json()["message"]
        assert client.post(f"{url}/assign", json={"molam_id": f"new-{cold}"}, headers=auth(PAY)).status_code == 200
    assert client.get(f"{url}/assignment/u1", headers=auth(CONNECT)).status_code == 403
    assert client.get(f"{url}/assignment/u1", headers=auth(PAY)).get_json()["variant_id"] == held["u1"]
    # ops_admin is never scoped; a token with the allowed role among others passes.
    assert client.post(f"{url}/assign", json={"molam_id": "admin-user"}, headers=auth("ops_admin")).status_code == 200
    assert client.post(f"{url}/assign", json={"molam_id": "both"}, headers=auth([CONNECT, PAY])).status_code == 200


def test_the_scope_costs_a_warm_assign_no_round_trip(client, auth, pay_only, settings):
    experiment, _ = pay_only
    url = f"/api/experiments/{experiment['id']}/assign"
    assert client.post(url, json={"molam_id": "warm"}, headers=auth(PAY)).status_code == 200
    for role, status in ((PAY, 200), (CONNECT, 403)):
        answers: list = []
        headers = auth(role)

        def call(answers=answers, headers=headers) -> None:
            answers.append(client.post(url, json={"molam_id": "warm"}, headers=headers))

        sent = client_commands(settings.redis_url, call)
        assert answers[0].status_code == status, role
        assert len(sent) == 1 and sent[0].upper().startswith("EVALSHA"), (role, sent)


def test_a_refused_assign_stores_nothing(client, auth, pay_only, settings):
    experiment, _ = pay_only
    client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "nobody-yet"}, headers=auth(CONNECT))
    assert client.get(f"/api/experiments/{experiment['id']}/assignment/nobody-yet", headers=auth(PAY)).status_code == 404


# --- track and the events batch ----------------------------------------------------------


def _track(client, auth, experiment, role, molam_id="u1"):
    return client.post(
        f"/api/experiments/{experiment['id']}/track", json={"molam_id": molam_id, "event_type": "click"}, headers=auth(role)
    )


def test_track_is_403_for_a_service_left_out_on_both_paths(client, auth, pay_only, settings):
    experiment, _ = pay_only
    redis_client = get_redis(settings.redis_url)
    # Cold: nothing cached, the general path reads PostgreSQL.
    refused = _track(client, auth, experiment, CONNECT)
    assert refused.status_code == 403 and refused.get_json()["errors"]["json"]["experiment_id"]
    # Warm: definition and assignment cached, the one-round-trip script refuses.
    assert _track(client, auth, experiment, PAY).status_code == 202
    assert redis_client.get(definition_key(experiment["id"])) is not None
    refused = _track(client, auth, experiment, CONNECT)
    assert refused.status_code == 403
    assert redis_client.xlen(ingestion.STREAM_KEY) == 1  # only pay_module's event
    assert _track(client, auth, experiment, "ops_admin").status_code == 202


def test_events_batch_rejects_only_the_items_of_experiments_left_out(client, auth, pay_only, create_experiment, settings):
    experiment, _ = pay_only
    open_to_all = create_experiment(start=True, targeting={})
    assign_users(settings, open_to_all, ["u1"])
    events = [
        {"experiment_id": experiment["id"], "molam_id": "u1", "event_type": "click"},
        {"experiment_id": open_to_all["id"], "molam_id": "u1", "event_type": "click"},
    ]
    response = client.post("/api/events/batch", json={"events": events}, headers=auth(CONNECT))
    assert response.status_code == 202
    body = response.get_json()
    assert len(body["accepted"]) == 1
    assert body["rejected"] == [
        {"index": 0, "reason": "service_not_allowed",
         "errors": {"experiment_id": ["this service may not track on the experiment"]}}
    ]
    allowed = client.post("/api/events/batch", json={"events": events}, headers=auth(PAY)).get_json()
    assert len(allowed["accepted"]) == 2 and allowed["rejected"] == []


# --- exposures batch -------------------------------------------------------------------


def test_exposure_batch_rejects_items_of_experiments_left_out(client, auth, pay_only, settings):
    from services.experiments import assignment
    from services.experiments.buckets import split_bucket
    from services.experiments.definitions import get_definition

    experiment, _ = pay_only
    definition = get_definition(get_redis(settings.redis_url), experiment["id"])
    variant = assignment.variant_for_bucket(definition, split_bucket(experiment["id"], "sdk-user")).id
    exposure = {"experiment_id": experiment["id"], "molam_id": "sdk-user", "variant_id": variant,
                "evaluated_at": datetime.now(timezone.utc).isoformat()}
    refused = client.post("/api/assignments/batch", json={"exposures": [exposure]}, headers=auth(CONNECT)).get_json()
    assert refused["accepted"] == [] and refused["rejected"][0]["reason"] == "service_not_allowed"
    assert client.get(f"/api/experiments/{experiment['id']}/assignment/sdk-user", headers=auth(PAY)).status_code == 404
    stored = client.post("/api/assignments/batch", json={"exposures": [exposure]}, headers=auth(PAY)).get_json()
    assert stored["rejected"] == [] and stored["accepted"][0]["new"] is True


# --- SDK definitions -------------------------------------------------------------------


def _definitions(client, auth, role, etag=None):
    headers = auth(role)
    if etag:
        headers["If-None-Match"] = etag
    return client.get("/api/sdk/definitions", headers=headers)


def test_sdk_definitions_are_filtered_per_caller_with_their_own_etag(client, auth, pay_only, create_experiment):
    experiment, _ = pay_only
    open_to_all = create_experiment(start=True, targeting={})
    pay = _definitions(client, auth, PAY)
    connect = _definitions(client, auth, CONNECT)
    admin = _definitions(client, auth, "ops_admin")
    ids = {name: {e["id"] for e in r.get_json()["experiments"]} for name, r in (("pay", pay), ("connect", connect), ("admin", admin))}
    assert ids == {"pay": {experiment["id"], open_to_all["id"]}, "connect": {open_to_all["id"]},
                   "admin": {experiment["id"], open_to_all["id"]}}
    assert pay.headers["ETag"] != connect.headers["ETag"]
    assert _definitions(client, auth, CONNECT, connect.headers["ETag"]).status_code == 304
    # Another service's ETag is not this caller's: the full body comes back.
    assert _definitions(client, auth, CONNECT, pay.headers["ETag"]).status_code == 200
    # The view's ETag is the hash of the bytes served (strong, recomputable by any process).
    from services.sdk.definitions import etag_of

    assert connect.headers["ETag"] == f'"{etag_of(connect.get_data())}"'
    # Opening the experiment to connect_module changes connect's view (stop, clone-free: a new experiment).
    client.post(f"/api/experiments/{open_to_all['id']}/stop", headers=auth("ops_admin"))
    after = _definitions(client, auth, CONNECT, connect.headers["ETag"])
    assert after.status_code == 200 and after.get_json()["experiments"] == []

"""Four-eyes approval over HTTP: the state machine, requester != approver, invalidation, audit."""
from __future__ import annotations

import pytest

from api import create_app


def _post(client, path, headers, body=None):
    return client.post(path, json=body if body is not None else {}, headers=headers)


@pytest.fixture
def pricing(create_experiment):
    return create_experiment(category="pricing", targeting={})


def test_pricing_experiments_always_need_approval(client, auth, create_experiment, pricing):
    assert pricing["requires_approval"] is True and pricing["category"] == "pricing"
    refused = _post(client, f"/api/experiments/{pricing['id']}/start", auth("ops_admin"))
    assert refused.status_code == 409 and refused.get_json()["message"].startswith("approval required")
    switched_off = client.patch(f"/api/experiments/{pricing['id']}", json={"requires_approval": False}, headers=auth())
    assert switched_off.status_code == 422 and "requires_approval" in switched_off.get_json()["errors"]["json"]
    plain = create_experiment(targeting={})
    assert plain["requires_approval"] is False
    assert _post(client, f"/api/experiments/{plain['id']}/start", auth()).status_code == 200


def test_request_approve_start_and_the_audit_trail(client, auth, pricing):
    eid = pricing["id"]
    asked = _post(client, f"/api/experiments/{eid}/approval-requests", auth("marketing", sub="mariam"), {"comment": "price test"})
    assert asked.status_code == 201
    request = asked.get_json()
    assert request["status"] == "pending" and request["requested_by"] == "mariam" and request["experiment_name"]
    again = _post(client, f"/api/experiments/{eid}/approval-requests", auth("marketing", sub="mariam"))
    assert again.status_code == 409
    queue = client.get("/api/approval-requests?status=pending", headers=auth("data_science")).get_json()
    assert [r["id"] for r in queue] == [request["id"]]
    # Still not startable while pending.
    assert _post(client, f"/api/experiments/{eid}/start", auth()).status_code == 409
    # A comment is required.
    no_comment = _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="olu"))
    assert no_comment.status_code == 422 and "comment" in no_comment.get_json()["errors"]["json"]
    approved = _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="olu"), {"comment": "fine"})
    assert approved.status_code == 200
    assert approved.get_json()["status"] == "approved" and approved.get_json()["decided_by"] == "olu"
    assert client.get("/api/approval-requests?status=pending", headers=auth()).get_json() == []
    started = _post(client, f"/api/experiments/{eid}/start", auth("marketing", sub="mariam"))
    assert started.status_code == 200 and started.get_json()["status"] == "running"
    actions = [e["action"] for e in reversed(client.get(f"/api/audit?experiment_id={eid}", headers=auth()).get_json())]
    assert actions == ["create", "request_approval", "approve", "start"]
    approve_entry = next(e for e in client.get(f"/api/audit?experiment_id={eid}", headers=auth()).get_json() if e["action"] == "approve")
    assert approve_entry["actor"] == "olu" and approve_entry["after"]["decision_comment"] == "fine"


def test_the_requester_cannot_decide_and_only_ops_admin_can(client, auth, pricing):
    eid = pricing["id"]
    _post(client, f"/api/experiments/{eid}/approval-requests", auth("ops_admin", sub="ada"), {"comment": "go"})
    own = _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="ada"), {"comment": "self"})
    assert own.status_code == 403 and "requester" in own.get_json()["message"]
    own_reject = _post(client, f"/api/experiments/{eid}/reject", auth("ops_admin", sub="ada"), {"comment": "self"})
    assert own_reject.status_code == 403
    for role in ("marketing", "data_science", "pay_module"):
        assert _post(client, f"/api/experiments/{eid}/approve", auth(role, sub="bob"), {"comment": "x"}).status_code == 403
    rejected = _post(client, f"/api/experiments/{eid}/reject", auth("ops_admin", sub="bea"), {"comment": "too risky"})
    assert rejected.status_code == 200 and rejected.get_json()["status"] == "rejected"
    assert _post(client, f"/api/experiments/{eid}/start", auth()).status_code == 409
    # Nothing pending to decide any more; a new request may be made.
    assert _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="bea"), {"comment": "x"}).status_code == 409
    assert _post(client, f"/api/experiments/{eid}/approval-requests", auth("ops_admin", sub="ada")).status_code == 201
    history = client.get(f"/api/experiments/{eid}/approval-requests", headers=auth()).get_json()
    assert [r["status"] for r in history] == ["pending", "rejected"]


def test_a_change_after_approval_invalidates_it(client, auth, pricing):
    eid = pricing["id"]
    _post(client, f"/api/experiments/{eid}/approval-requests", auth("marketing", sub="mariam"))
    _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="olu"), {"comment": "ok"})
    changed = client.patch(f"/api/experiments/{eid}", json={"description": "now with a bigger discount"}, headers=auth("marketing", sub="mariam"))
    assert changed.status_code == 200
    history = client.get(f"/api/experiments/{eid}/approval-requests", headers=auth()).get_json()
    assert history[0]["status"] == "invalidated" and history[0]["invalidated_at"]
    refused = _post(client, f"/api/experiments/{eid}/start", auth())
    assert refused.status_code == 409 and refused.get_json()["message"].startswith("approval required")
    actions = [e["action"] for e in reversed(client.get(f"/api/audit?experiment_id={eid}", headers=auth()).get_json())]
    assert actions[-2:] == ["update", "invalidate_approval"]
    # A pending request is voided the same way.
    _post(client, f"/api/experiments/{eid}/approval-requests", auth("marketing", sub="mariam"))
    client.patch(f"/api/experiments/{eid}", json={"coverage": 50}, headers=auth())
    assert _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="olu"), {"comment": "ok"}).status_code == 409
    # Approve the current version and it starts.
    _post(client, f"/api/experiments/{eid}/approval-requests", auth("marketing", sub="mariam"))
    _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="olu"), {"comment": "ok"})
    assert _post(client, f"/api/experiments/{eid}/start", auth()).status_code == 200
    assert _post(client, f"/api/experiments/{eid}/approval-requests", auth()).status_code == 409


def test_approvals_required_everywhere(settings, migrated_database, auth):
    from tests.conftest import experiment_body

    strict = create_app(settings.with_overrides(approvals_required=True))
    client = strict.test_client()
    created = client.post("/api/experiments", json=experiment_body(), headers=auth()).get_json()
    assert created["requires_approval"] is True
    refused = client.post(f"/api/experiments/{created['id']}/start", headers=auth())
    assert refused.status_code == 409 and "approval required" in refused.get_json()["message"]


def test_the_four_eyes_rule_is_also_a_database_constraint(settings, pricing):
    import psycopg

    plain = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO experiment_approval_requests (experiment_id, status, requested_by, experiment_version, decided_by, decided_at) "
            "VALUES (%s, 'approved', 'ada', 1, 'ada', now())",
            (pricing["id"],),
        )


def test_saving_the_draft_unchanged_keeps_the_approval(client, auth, pricing):
    eid = pricing["id"]
    _post(client, f"/api/experiments/{eid}/approval-requests", auth("marketing", sub="mariam"))
    _post(client, f"/api/experiments/{eid}/approve", auth("ops_admin", sub="olu"), {"comment": "ok"})
    same = {k: pricing[k] for k in ("name", "description", "coverage", "category")}
    same["variants"] = [
        {"name": v["name"], "config": v["config"], "traffic_share": v["traffic_share"], "is_control": v["is_control"]}
        for v in pricing["variants"]
    ]
    assert client.patch(f"/api/experiments/{eid}", json=same, headers=auth()).status_code == 200
    assert client.get(f"/api/experiments/{eid}/approval-requests", headers=auth()).get_json()[0]["status"] == "approved"
    assert _post(client, f"/api/experiments/{eid}/start", auth()).status_code == 200

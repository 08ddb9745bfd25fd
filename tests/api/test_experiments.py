"""Experiment definitions: creation, validation, updates and every lifecycle transition."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.support.api import experiment_body

STATUSES = ("draft", "running", "stopped", "archived")
# action -> {status it starts from: status it leads to}; every other pair is a 409.
ALLOWED = {
    "start": {"draft": "running", "stopped": "running"},
    "stop": {"running": "stopped"},
    "archive": {"draft": "archived", "stopped": "archived"},
}
PATH_TO = {"draft": [], "running": ["start"], "stopped": ["start", "stop"], "archived": ["archive"]}


@pytest.fixture
def experiment_in(client, auth, create_experiment):
    def make(status: str) -> dict:
        experiment = create_experiment()
        for action in PATH_TO[status]:
            response = client.post(f"/api/experiments/{experiment['id']}/{action}", headers=auth())
            assert response.status_code == 200, response.get_json()
            experiment = response.get_json()
        assert experiment["status"] == status
        return experiment

    return make


def test_create_returns_the_full_draft(client, auth):
    response = client.post("/api/experiments", json=experiment_body(), headers=auth("marketing", sub="mkt-7"))
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "draft"
    assert body["created_by"] == "mkt-7"
    assert body["mode"] == "ab" and body["coverage"] == 100 and body["primary_metric"] == "conversion"
    assert body["targeting"] == {"country": ["SN", "FR"], "lang": ["fr"]}
    assert [v["name"] for v in body["variants"]] == ["Control (Blue)", "Green Button"]
    assert all(uuid.UUID(v["id"]) for v in body["variants"])
    assert body["variants"][0]["is_control"] and not body["variants"][1]["is_control"]
    assert body["variants"][1]["config"] == {"button_color": "green"}
    assert body["fail_fast"] == {"rule": "sequential", "min_samples": 100, "threshold": 0.95, "action": "recommend"}
    assert body["guardrails"] == ["fraud_alert", "refund"] and body["guardrail_action"] == "pause_variant"
    assert body["created_at"] and body["updated_at"]
    fetched = client.get(f"/api/experiments/{body['id']}", headers=auth("data_science")).get_json()
    assert fetched == body


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("action", sorted(ALLOWED))
def test_every_transition(client, auth, experiment_in, status, action):
    experiment = experiment_in(status)
    response = client.post(f"/api/experiments/{experiment['id']}/{action}", headers=auth())
    expected = ALLOWED[action].get(status)
    if expected is None:
        assert response.status_code == 409
        assert status in response.get_json()["message"]
        after = client.get(f"/api/experiments/{experiment['id']}", headers=auth()).get_json()
        assert after["status"] == status
    else:
        assert response.status_code == 200
        assert response.get_json()["status"] == expected


@pytest.mark.parametrize("status", STATUSES)
def test_delete_only_drafts(client, auth, experiment_in, status):
    experiment = experiment_in(status)
    response = client.delete(f"/api/experiments/{experiment['id']}", headers=auth())
    if status == "draft":
        assert response.status_code == 204
        assert client.get(f"/api/experiments/{experiment['id']}", headers=auth()).status_code == 404
    else:
        assert response.status_code == 409
        assert client.get(f"/api/experiments/{experiment['id']}", headers=auth()).status_code == 200


def test_start_sets_started_at_and_stop_sets_stopped_at(client, auth, experiment_in):
    running = experiment_in("running")
    assert running["started_at"] and running["stopped_at"] is None
    stopped = client.post(f"/api/experiments/{running['id']}/stop", headers=auth()).get_json()
    assert stopped["stopped_at"]
    restarted = client.post(f"/api/experiments/{running['id']}/start", headers=auth()).get_json()
    assert restarted["started_at"] == running["started_at"] and restarted["stopped_at"] is None


@pytest.mark.parametrize("method,suffix", [("get", ""), ("patch", ""), ("delete", ""), ("post", "/start"), ("post", "/stop"), ("post", "/archive")])
def test_unknown_experiment_is_404(client, auth, method, suffix):
    kwargs = {"json": {"name": "x"}} if method == "patch" else {}
    response = getattr(client, method)(f"/api/experiments/{uuid.uuid4()}{suffix}", headers=auth(), **kwargs)
    assert response.status_code == 404
    assert response.get_json()["code"] == 404


def test_draft_accepts_any_change(client, auth, experiment_in):
    experiment = experiment_in("draft")
    variants = [
        {"name": "A", "config": {"price": 10}, "traffic_share": 34, "is_control": True},
        {"name": "B", "config": {"price": 12}, "traffic_share": 33},
        {"name": "C", "config": {"price": 14}, "traffic_share": 33},
    ]
    response = client.patch(
        f"/api/experiments/{experiment['id']}",
        json={"name": "Pricing", "variants": variants, "mode": "bandit", "coverage": 50, "targeting": {"currency": ["XOF"]}},
        headers=auth("data_science"),
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["name"] == "Pricing" and body["mode"] == "bandit" and body["coverage"] == 50
    assert [v["name"] for v in body["variants"]] == ["A", "B", "C"]
    assert body["targeting"] == {"currency": ["XOF"]}
    assert body["version"] == experiment["version"] + 1


@pytest.mark.parametrize("status", ["running", "stopped"])
def test_started_experiment_only_renames(client, auth, experiment_in, status):
    experiment = experiment_in(status)
    ok = client.patch(f"/api/experiments/{experiment['id']}", json={"name": "Renamed", "description": "why"}, headers=auth())
    assert ok.status_code == 200 and ok.get_json()["name"] == "Renamed"
    refused = client.patch(f"/api/experiments/{experiment['id']}", json={"coverage": 10}, headers=auth())
    assert refused.status_code == 409
    assert "coverage" in refused.get_json()["message"] and status in refused.get_json()["message"]


def test_archived_experiment_cannot_change(client, auth, experiment_in):
    experiment = experiment_in("archived")
    assert client.patch(f"/api/experiments/{experiment['id']}", json={"mode": "bandit"}, headers=auth()).status_code == 409


def test_list_filters_and_paginates(client, auth, create_experiment):
    for _ in range(3):
        create_experiment()
    create_experiment(start=True)
    response = client.get("/api/experiments?status=draft&page=1&page_size=2", headers=auth("marketing"))
    assert response.status_code == 200
    assert len(response.get_json()) == 2
    pagination = json.loads(response.headers["X-Pagination"])
    assert pagination["total"] == 3 and pagination["total_pages"] == 2
    running = client.get("/api/experiments?status=running", headers=auth()).get_json()
    assert [e["status"] for e in running] == ["running"]
    assert client.get("/api/experiments?status=bogus", headers=auth()).status_code == 422


def test_list_searches_names_and_filters_mode_and_owner(client, auth, create_experiment):
    create_experiment(name="Checkout button colour")
    create_experiment(name="Checkout 100% copy", mode="bandit")
    create_experiment(name="Onboarding_flow")
    made_by_marketing = client.post(
        "/api/experiments", json={**experiment_body(name="Pricing page"), "mode": "ab"}, headers=auth("marketing", sub="amina")
    )
    assert made_by_marketing.status_code == 201
    names = lambda query: sorted(e["name"] for e in client.get("/api/experiments", query_string=query, headers=auth()).get_json())
    assert names({"q": "CHECKOUT"}) == ["Checkout 100% copy", "Checkout button colour"]
    assert names({"q": "checkout", "mode": "bandit"}) == ["Checkout 100% copy"]
    # LIKE wildcards in the search are literal characters.
    assert names({"q": "100%"}) == ["Checkout 100% copy"]
    assert names({"q": "g_f"}) == ["Onboarding_flow"]
    assert names({"q": "%"}) == ["Checkout 100% copy"]
    assert names({"created_by": "amina"}) == ["Pricing page"]
    assert names({"created_by": "nobody"}) == []
    pagination = json.loads(client.get("/api/experiments?q=checkout&page_size=1", headers=auth()).headers["X-Pagination"])
    assert pagination["total"] == 2
    for bad in ({"mode": "bogus"}, {"q": ""}, {"q": "x" * 201}, {"created_by": ""}):
        response = client.get("/api/experiments", query_string=bad, headers=auth())
        assert response.status_code == 422, bad
        assert set(response.get_json()["errors"]["query"]) == set(bad)


def _variants(*shares, controls=(0,), names=None):
    names = names or [f"V{i}" for i in range(len(shares))]
    return [
        {"name": names[i], "config": {"k": i}, "traffic_share": share, "is_control": i in controls}
        for i, share in enumerate(shares)
    ]


INVALID_BODIES = [
    ("one variant", {"variants": _variants(100)}, "variants"),
    ("21 variants", {"variants": _variants(*([5] * 20 + [0]))}, "variants"),
    ("shares 90", {"variants": _variants(40, 50)}, "variants"),
    ("shares 110", {"variants": _variants(60, 50)}, "variants"),
    ("no control", {"variants": _variants(50, 50, controls=())}, "variants"),
    ("two controls", {"variants": _variants(50, 50, controls=(0, 1))}, "variants"),
    ("duplicate names", {"variants": _variants(50, 50, names=["A", "A"])}, "variants"),
    ("negative share", {"variants": _variants(-10, 110)}, "variants"),
    ("config not object", {"variants": [{"name": "A", "config": [1], "traffic_share": 50, "is_control": True}, {"name": "B", "traffic_share": 50}]}, "variants"),
    ("config too big", {"variants": [{"name": "A", "config": {"x": "y" * 16400}, "traffic_share": 50, "is_control": True}, {"name": "B", "traffic_share": 50}]}, "variants"),
    ("unknown targeting key", {"targeting": {"planet": ["mars"]}}, "targeting"),
    ("lower-case country", {"targeting": {"country": ["sn"]}}, "targeting"),
    ("unknown country", {"targeting": {"country": ["XX"]}}, "targeting"),
    ("lower-case currency", {"targeting": {"currency": ["xof"]}}, "targeting"),
    ("unknown currency", {"targeting": {"currency": ["ABC"]}}, "targeting"),
    ("min_txn negative", {"targeting": {"min_txn": -1}}, "targeting"),
    ("min_txn not integer", {"targeting": {"min_txn": "5"}}, "targeting"),
    ("unknown top-level field", {"owner": "me"}, "owner"),
    ("bad mode", {"mode": "casino"}, "mode"),
    ("coverage zero", {"coverage": 0}, "coverage"),
    ("coverage over 100", {"coverage": 101}, "coverage"),
    ("bad primary metric", {"primary_metric": "revenue"}, "primary_metric"),
    ("missing name", {"name": None}, "name"),
    ("bad fail-fast rule", {"fail_fast": {"rule": "gut_feeling"}}, "fail_fast"),
    ("bad guardrail", {"guardrails": ["tears"]}, "guardrails"),
]


@pytest.mark.parametrize("label,overrides,field", INVALID_BODIES, ids=[c[0] for c in INVALID_BODIES])
def test_create_validation(client, auth, label, overrides, field):
    body = experiment_body(**overrides)
    if overrides.get("name", "") is None:
        del body["name"]
    response = client.post("/api/experiments", json=body, headers=auth())
    assert response.status_code == 422, response.get_json()
    payload = response.get_json()
    assert payload["code"] == 422 and payload["status"] == "Unprocessable Entity"
    assert field in json.dumps(payload["errors"])
    assert client.get("/api/experiments", headers=auth()).get_json() == []


def test_non_json_body_is_rejected(client, auth):
    response = client.post("/api/experiments", data="not json", headers={**auth(), "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500


def test_patch_validates_variants_too(client, auth, experiment_in):
    experiment = experiment_in("draft")
    body = {"variants": _variants(50, 40)}
    response = client.patch(f"/api/experiments/{experiment['id']}", json=body, headers=auth())
    assert response.status_code == 422
    unchanged = client.get(f"/api/experiments/{experiment['id']}", headers=auth()).get_json()
    assert [v["id"] for v in unchanged["variants"]] == [v["id"] for v in experiment["variants"]]


def test_shares_may_have_cents(client, auth):
    body = experiment_body(variants=_variants(33.34, 33.33, 33.33))
    response = client.post("/api/experiments", json=body, headers=auth())
    assert response.status_code == 201, response.get_json()
    assert [v["traffic_share"] for v in response.get_json()["variants"]] == [33.34, 33.33, 33.33]


def test_validation_error_message_names_the_fields(client, auth):
    body = experiment_body(coverage=0, mode="casino")
    payload = client.post("/api/experiments", json=body, headers=auth()).get_json()
    assert payload["message"] == "invalid request: coverage, mode"


@pytest.mark.parametrize("path", ["/api/experiments", "/api/audit", "/api/reports"])
def test_absurd_page_is_an_empty_page(client, auth, create_experiment, path):
    create_experiment()
    response = client.get(f"{path}?page=47257189766493208576&page_size=20", headers=auth())
    assert response.status_code == 200 and response.get_json() == []

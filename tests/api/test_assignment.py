"""POST /assign and GET /assignment: contract, targeting, coverage, stickiness, roles."""
from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from core import db
from core.config import libpq_url
from core.redis import get_redis
from services.cache import assignment_key, definition_key, weights_key
from services.experiments.audit import SIRA_ACTOR
from services.experiments.buckets import coverage_bucket, split_bucket
from services.experiments.lifecycle import set_variant_paused

SERVICE = "pay_module"


_headers: dict[tuple[str, str], dict[str, str]] = {}


def _auth(auth, role=SERVICE, sub="pay-svc"):
    """Minting a token costs ~25 ms (PEM parsing); reuse one per caller."""
    if (role, sub) not in _headers:
        _headers[(role, sub)] = auth(role, sub=sub)
    return _headers[(role, sub)]


def _assign(client, auth, experiment_id, sub="pay-svc", **body):
    return client.post(f"/api/experiments/{experiment_id}/assign", json=body, headers=_auth(auth, SERVICE, sub))


def _stored_rows(settings, experiment_id):
    plain = libpq_url(settings.database_url)
    with psycopg.connect(plain) as conn:
        return conn.execute(
            "SELECT molam_id, variant_id::text, country, lang, currency, region, device FROM experiment_assignments "
            "WHERE experiment_id = %s ORDER BY molam_id",
            (experiment_id,),
        ).fetchall()


FULL_TARGETING = {
    "country": ["SN", "FR"],
    "lang": ["fr"],
    "currency": ["XOF"],
    "region": ["dakar"],
    "device": ["android"],
    "min_txn": 5,
}
MATCHING = {"country": "SN", "lang": "fr", "currency": "XOF", "region": "dakar", "device": "android", "txn_count": 5}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"country": "FR", "txn_count": 900}, None),
        ({"country": "US"}, "country_not_targeted"),
        ({"country": None}, "country_missing"),
        ({"lang": "en"}, "lang_not_targeted"),
        ({"lang": None}, "lang_missing"),
        ({"currency": "EUR"}, "currency_not_targeted"),
        ({"currency": None}, "currency_missing"),
        ({"region": "thies"}, "region_not_targeted"),
        ({"region": None}, "region_missing"),
        ({"device": "ios"}, "device_not_targeted"),
        ({"device": None}, "device_missing"),
        ({"txn_count": 4}, "below_min_txn"),
        ({"txn_count": 0}, "below_min_txn"),
        ({"txn_count": None}, "txn_count_missing"),
    ],
)
def test_targeting_matrix(client, auth, create_experiment, settings, changes, reason):
    experiment = create_experiment(start=True, targeting=FULL_TARGETING)
    body = {k: v for k, v in {**MATCHING, **changes}.items() if v is not None}
    response = _assign(client, auth, experiment["id"], molam_id="user-1", **body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    if reason is None:
        assert answer["eligible"] is True and answer["new"] is True
        assert answer["variant_id"] in {v["id"] for v in experiment["variants"]}
        rows = _stored_rows(settings, experiment["id"])
        assert rows == [("user-1", answer["variant_id"], body["country"], "fr", "XOF", "dakar", "android")]
    else:
        assert answer == {
            "experiment_id": experiment["id"],
            "molam_id": "user-1",
            "eligible": False,
            "variant_id": None,
            "reason": reason,
        }
        assert _stored_rows(settings, experiment["id"]) == []
        assert get_redis(settings.redis_url).get(assignment_key(experiment["id"], "user-1")) is None
        lookup = client.get(f"/api/experiments/{experiment['id']}/assignment/user-1", headers=_auth(auth))
        assert lookup.status_code == 404


def test_untargeted_experiment_takes_anyone(client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    answer = _assign(client, auth, experiment["id"], molam_id="bare").get_json()
    assert answer["eligible"] is True


def test_min_txn_zero_does_not_require_txn_count(client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={"min_txn": 0})
    assert _assign(client, auth, experiment["id"], molam_id="bare").get_json()["eligible"] is True


def test_eligible_response_contract(client, auth, create_experiment):
    experiment = create_experiment(start=True)
    first = _assign(client, auth, experiment["id"], molam_id="user_123", country="SN", lang="fr")
    assert first.status_code == 200
    answer = first.get_json()
    assert set(answer) == {
        "experiment_id", "molam_id", "eligible", "variant_id", "variant_name", "is_control", "config", "assigned_at", "new"
    }
    variant = next(v for v in experiment["variants"] if v["id"] == answer["variant_id"])
    assert answer["variant_name"] == variant["name"]
    assert answer["is_control"] == variant["is_control"]
    assert answer["config"] == variant["config"]
    assert answer["new"] is True and answer["molam_id"] == "user_123"

    again = _assign(client, auth, experiment["id"], molam_id="user_123", country="SN", lang="fr").get_json()
    assert again == {**answer, "new": False}

    lookup = client.get(f"/api/experiments/{experiment['id']}/assignment/user_123", headers=auth("ops_admin"))
    assert lookup.status_code == 200
    assert lookup.get_json() == {k: v for k, v in answer.items() if k not in ("eligible", "new")}


def test_split_follows_the_documented_hash(client, auth, create_experiment):
    """The variant is the documented bucket function of (experiment id, molam_id)."""
    experiment = create_experiment(start=True, targeting={})
    control, treatment = experiment["variants"]
    for n in range(40):
        molam_id = f"hash-{n}"
        expected = control if split_bucket(experiment["id"], molam_id) < 5000 else treatment
        assert _assign(client, auth, experiment["id"], molam_id=molam_id).get_json()["variant_id"] == expected["id"]


def test_coverage_excludes_by_an_independent_hash(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, targeting={}, coverage=25)
    seen = {True: 0, False: 0}
    for n in range(200):
        molam_id = f"cov-{n}"
        answer = _assign(client, auth, experiment["id"], molam_id=molam_id).get_json()
        inside = coverage_bucket(experiment["id"], molam_id) < 2500
        assert answer["eligible"] is inside
        if not inside:
            assert answer["reason"] == "outside_coverage"
        seen[inside] += 1
    assert 0 < seen[True] < seen[False]
    assert len(_stored_rows(settings, experiment["id"])) == seen[True]


def test_not_running_unknown_and_draft(client, auth, create_experiment):
    draft = create_experiment()
    response = _assign(client, auth, draft["id"], molam_id="u")
    assert response.status_code == 409 and response.get_json()["code"] == 409
    unknown = _assign(client, auth, str(uuid.uuid4()), molam_id="u")
    assert unknown.status_code == 404 and unknown.get_json()["status"] == "Not Found"
    lookup = client.get(f"/api/experiments/{uuid.uuid4()}/assignment/u", headers=_auth(auth))
    assert lookup.status_code == 404


def test_stop_is_seen_at_once_and_assignments_survive_stop_start(client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    first = _assign(client, auth, experiment["id"], molam_id="loyal").get_json()
    assert client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin")).status_code == 200
    stopped = _assign(client, auth, experiment["id"], molam_id="loyal")
    assert stopped.status_code == 409
    assert "stopped" in stopped.get_json()["message"]
    # The stored assignment is still readable while stopped.
    lookup = client.get(f"/api/experiments/{experiment['id']}/assignment/loyal", headers=_auth(auth))
    assert lookup.status_code == 200 and lookup.get_json()["variant_id"] == first["variant_id"]
    assert client.post(f"/api/experiments/{experiment['id']}/start", headers=auth("ops_admin")).status_code == 200
    again = _assign(client, auth, experiment["id"], molam_id="loyal").get_json()
    assert again["variant_id"] == first["variant_id"] and again["new"] is False
    assert again["assigned_at"] == first["assigned_at"]


def test_sticky_after_redis_flush(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, targeting={}, mode="bandit")
    users = [f"flush-{n}" for n in range(30)]
    before = {u: _assign(client, auth, experiment["id"], molam_id=u).get_json() for u in users}
    redis_client = get_redis(settings.redis_url)
    # Publish weights that would send every new user to one arm, then lose the cache.
    other = experiment["variants"][0]["id"]
    redis_client.set(weights_key(experiment["id"]), json.dumps({"weights": {other: 1.0}, "burn_in": False}))
    redis_client.flushdb()
    redis_client.set(weights_key(experiment["id"]), json.dumps({"weights": {other: 1.0}, "burn_in": False}))
    for user in users:
        answer = _assign(client, auth, experiment["id"], molam_id=user).get_json()
        assert answer["variant_id"] == before[user]["variant_id"]
        assert answer["new"] is False
        assert answer["assigned_at"] == before[user]["assigned_at"]
    assert len({a["variant_id"] for a in before.values()}) == 2  # both arms were in play


def test_sticky_after_weight_change_and_pause(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, targeting={}, mode="bandit")
    control, treatment = (v["id"] for v in experiment["variants"])
    redis_client = get_redis(settings.redis_url)
    redis_client.set(weights_key(experiment["id"]), json.dumps({"weights": {control: 1.0, treatment: 0.0}, "burn_in": False}))
    early = [f"early-{n}" for n in range(20)]
    for user in early:
        assert _assign(client, auth, experiment["id"], molam_id=user).get_json()["variant_id"] == control
    redis_client.set(weights_key(experiment["id"]), json.dumps({"weights": {control: 0.0, treatment: 1.0}, "burn_in": False}))
    assert _assign(client, auth, experiment["id"], molam_id="late").get_json()["variant_id"] == treatment
    for user in early:
        assert _assign(client, auth, experiment["id"], molam_id=user).get_json()["variant_id"] == control

    # SIRA pauses the control: existing users keep it, new users never get it.
    session = db.new_session()
    set_variant_paused(session, uuid.UUID(experiment["id"]), uuid.UUID(control), paused=True, actor=SIRA_ACTOR, reason="test")
    session.commit()
    session.close()
    redis_client.delete(definition_key(experiment["id"]))
    redis_client.set(weights_key(experiment["id"]), json.dumps({"weights": {control: 1.0, treatment: 0.0}, "burn_in": False}))
    for user in early:
        assert _assign(client, auth, experiment["id"], molam_id=user).get_json()["variant_id"] == control
    for n in range(20):
        assert _assign(client, auth, experiment["id"], molam_id=f"after-pause-{n}").get_json()["variant_id"] == treatment


def test_ab_pause_renormalises_split_for_new_users_only(client, auth, create_experiment, settings):
    variants = [
        {"name": "A", "traffic_share": 40, "is_control": True},
        {"name": "B", "traffic_share": 30},
        {"name": "C", "traffic_share": 30},
    ]
    experiment = create_experiment(start=True, targeting={}, variants=variants)
    ids = {v["name"]: v["id"] for v in experiment["variants"]}
    before = {f"ab-{n}": _assign(client, auth, experiment["id"], molam_id=f"ab-{n}").get_json()["variant_id"] for n in range(60)}
    session = db.new_session()
    set_variant_paused(session, uuid.UUID(experiment["id"]), uuid.UUID(ids["B"]), paused=True, actor=SIRA_ACTOR)
    session.commit()
    session.close()
    get_redis(settings.redis_url).delete(definition_key(experiment["id"]))
    for user, variant in before.items():
        assert _assign(client, auth, experiment["id"], molam_id=user).get_json()["variant_id"] == variant
    for n in range(60):
        molam_id = f"ab-new-{n}"
        bucket = split_bucket(experiment["id"], molam_id)
        expected = ids["A"] if bucket < 40 * 10_000 // 70 else ids["C"]
        assert _assign(client, auth, experiment["id"], molam_id=molam_id).get_json()["variant_id"] == expected


def test_sticky_when_targeting_no_longer_matches(client, auth, create_experiment, settings):
    """Once assigned, a user keeps the variant even if a later request would not qualify."""
    experiment = create_experiment(start=True)
    first = _assign(client, auth, experiment["id"], molam_id="traveller", country="SN", lang="fr").get_json()
    get_redis(settings.redis_url).flushdb()
    later = _assign(client, auth, experiment["id"], molam_id="traveller", country="US", lang="en").get_json()
    assert later["eligible"] is True and later["variant_id"] == first["variant_id"] and later["new"] is False


def test_cached_definition_is_the_shared_contract(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, mode="bandit", targeting={"country": ["SN"]}, coverage=80)
    molam_id = next(f"u{n}" for n in range(100) if coverage_bucket(experiment["id"], f"u{n}") < 8000)
    assert _assign(client, auth, experiment["id"], molam_id=molam_id, country="SN").get_json()["eligible"] is True
    redis_client = get_redis(settings.redis_url)
    document = json.loads(redis_client.get(definition_key(experiment["id"])))
    assert 0 < redis_client.ttl(definition_key(experiment["id"])) <= 60
    assert document == {
        "id": experiment["id"],
        "status": "running",
        "mode": "bandit",
        "coverage": 80.0,
        "primary_metric": "conversion",
        "targeting": {"country": ["SN"]},
        "version": experiment["version"],
        "bandit": {"min_samples": 100, "floor": 0.01},
        "variants": [
            {
                "id": v["id"],
                "name": v["name"],
                "config": v["config"],
                "is_control": v["is_control"],
                "traffic_share": v["traffic_share"],
                "paused": False,
            }
            for v in experiment["variants"]
        ],
        "layer": None,
        "holdouts": [],
        "allowed_services": None,
    }
    cached = json.loads(redis_client.get(assignment_key(experiment["id"], molam_id)))
    assert set(cached) == {"variant_id", "assigned_at"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"molam_id": ""},
        {"molam_id": "x" * 201},
        {"molam_id": 42},
        {"molam_id": "u", "country": "sn"},
        {"molam_id": "u", "country": "XX"},
        {"molam_id": "u", "currency": "xof"},
        {"molam_id": "u", "currency": "ABC"},
        {"molam_id": "u", "lang": "FR"},
        {"molam_id": "u", "txn_count": -1},
        {"molam_id": "u", "txn_count": 1.5},
        {"molam_id": "u", "txn_count": "3"},
        {"molam_id": "u", "txn_count": True},
        {"molam_id": "u", "device": "d" * 33},
        {"molam_id": "u", "region": ""},
        {"molam_id": "u", "segment": "vip"},
    ],
)
def test_bad_bodies_are_422(client, auth, create_experiment, settings, body):
    experiment = create_experiment(start=True, targeting={})
    response = client.post(f"/api/experiments/{experiment['id']}/assign", json=body, headers=_auth(auth))
    assert response.status_code == 422, response.get_json()
    payload = response.get_json()
    assert payload["code"] == 422 and payload["errors"]["json"]
    assert _stored_rows(settings, experiment["id"]) == []


def test_non_json_body_is_rejected(client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    response = client.post(
        f"/api/experiments/{experiment['id']}/assign", data="molam_id=u", headers={**auth(SERVICE), "Content-Type": "text/plain"}
    )
    assert response.status_code in (415, 422)


@pytest.mark.parametrize(("role", "status"), [("pay_module", 200), ("connect_module", 200), ("ops_admin", 200), ("marketing", 403), ("data_science", 403)])
def test_roles(client, auth, create_experiment, role, status):
    experiment = create_experiment(start=True, targeting={})
    response = client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "u"}, headers=auth(role))
    assert response.status_code == status
    lookup = client.get(f"/api/experiments/{experiment['id']}/assignment/u", headers=auth(role))
    assert lookup.status_code == (200 if status == 200 else 403)


def test_requires_a_token(client, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    assert client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "u"}).status_code == 401


def test_metrics_count_new_assignments_only(client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={}, coverage=50)

    def counter() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        line = next((l for l in text.splitlines() if l.startswith("experiment_assignments_total{") and experiment["id"] in l), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    def decisions() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return float(next(l for l in text.splitlines() if l.startswith("sira_decisions_latency_seconds_count")).rsplit(" ", 1)[1])

    decided = decisions()
    eligible = 0
    for n in range(20):
        eligible += _assign(client, auth, experiment["id"], molam_id=f"m-{n}").get_json()["eligible"]
    for n in range(20):
        _assign(client, auth, experiment["id"], molam_id=f"m-{n}")
    assert counter() == eligible
    # Every first call is a decision (eligible or not); returning users are answered from cache.
    assert decisions() - decided == 20 + (20 - eligible)
    assert "m-1" not in client.get("/metrics").get_data(as_text=True)  # no molam_id in any label

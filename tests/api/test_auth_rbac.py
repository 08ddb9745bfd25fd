"""Bearer tokens (RS256 only) and the RBAC matrix, cell by cell."""
from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core import rbac
from tests.support.api import TEST_AUDIENCE, TEST_ISSUER, experiment_body

ROLES = ("ops_admin", "marketing", "data_science", "pay_module", "connect_module")

# The contract from the foundation issue; core/rbac.py must agree with it.
EXPECTED = {
    "create": {"ops_admin", "marketing"},
    "update": {"ops_admin", "marketing", "data_science"},
    "start": {"ops_admin", "marketing", "data_science"},
    "stop": {"ops_admin", "marketing", "data_science"},
    "pause_variant": {"ops_admin", "marketing", "data_science"},
    "archive": {"ops_admin"},
    "delete": {"ops_admin"},
    "list": {"ops_admin", "marketing", "data_science"},
    "get": {"ops_admin", "marketing", "data_science"},
    "results": {"ops_admin", "marketing", "data_science"},
    "reports": {"ops_admin", "marketing", "data_science"},
    "insights": {"ops_admin", "data_science"},
    "audit": {"ops_admin", "data_science"},
    "audit_checkpoints": {"ops_admin", "data_science"},
    "export": {"ops_admin", "data_science"},
    "fx_rates": {"ops_admin", "data_science"},
    "assign": {"ops_admin", "pay_module", "connect_module"},
    "track": {"ops_admin", "pay_module", "connect_module"},
    "sdk_definitions": {"ops_admin", "pay_module", "connect_module"},
    "record_exposures": {"pay_module", "connect_module"},
    "create_layer": {"ops_admin", "marketing"},
    "list_layers": {"ops_admin", "marketing", "data_science"},
    "create_holdout": {"ops_admin", "data_science"},
    "list_holdouts": {"ops_admin", "marketing", "data_science"},
    "holdout_results": {"ops_admin", "marketing", "data_science"},
    "request_approval": {"ops_admin", "marketing", "data_science"},
    "approve": {"ops_admin"},
    "reject": {"ops_admin"},
    "list_approvals": {"ops_admin", "marketing", "data_science"},
    "schedules": {"ops_admin", "marketing", "data_science"},
    "plan": {"ops_admin", "marketing", "data_science"},
}

PLAN = {"metric_kind": "proportion", "baseline": 0.1, "mde_relative": 0.1, "daily_users": 1000}


def _request(client, action, experiment, headers, setup=None):
    eid = experiment["id"]
    variant_id = experiment["variants"][0]["id"]
    holdout_id = (setup or {}).get("holdout_id", str(uuid.uuid4()))
    calls = {
        "create": lambda: client.post("/api/experiments", json=experiment_body(), headers=headers),
        "update": lambda: client.patch(f"/api/experiments/{eid}", json={"description": "x"}, headers=headers),
        "start": lambda: client.post(f"/api/experiments/{eid}/start", headers=headers),
        "stop": lambda: client.post(f"/api/experiments/{eid}/stop", headers=headers),
        "pause_variant": lambda: client.post(f"/api/experiments/{eid}/variants/{variant_id}/pause", headers=headers),
        "archive": lambda: client.post(f"/api/experiments/{eid}/archive", headers=headers),
        "delete": lambda: client.delete(f"/api/experiments/{eid}", headers=headers),
        "list": lambda: client.get("/api/experiments", headers=headers),
        "get": lambda: client.get(f"/api/experiments/{eid}", headers=headers),
        "results": lambda: client.get(f"/api/experiments/{eid}/results", headers=headers),
        "reports": lambda: client.get("/api/reports", headers=headers),
        "insights": lambda: client.get(f"/api/experiments/{eid}/insights", headers=headers),
        "audit": lambda: client.get("/api/audit", headers=headers),
        "audit_checkpoints": lambda: client.get("/api/audit/checkpoints", headers=headers),
        "export": lambda: client.get(f"/api/experiments/{eid}/export", headers=headers),
        "fx_rates": lambda: client.put(
            "/api/fx-rates", json={"base": "EUR", "valid_from": "2026-12-01", "rates": {"XOF": 655.957}}, headers=headers
        ),
        "assign": lambda: client.post(f"/api/experiments/{eid}/assign", json={"molam_id": "u1"}, headers=headers),
        "track": lambda: client.post(
            f"/api/experiments/{eid}/track",
            json={"molam_id": "u1", "event_type": "conversion", "variant_id": variant_id},
            headers=headers,
        ),
        "sdk_definitions": lambda: client.get("/api/sdk/definitions", headers=headers),
        "record_exposures": lambda: client.post(
            "/api/assignments/batch",
            json={"exposures": [{"experiment_id": eid, "molam_id": "u1", "variant_id": variant_id,
                                 "evaluated_at": "2026-12-01T00:00:00+00:00"}]},
            headers=headers,
        ),
        "create_layer": lambda: client.post("/api/layers", json={"name": "layer"}, headers=headers),
        "list_layers": lambda: client.get("/api/layers", headers=headers),
        "create_holdout": lambda: client.post("/api/holdouts", json={"name": "h", "percent": 5}, headers=headers),
        "list_holdouts": lambda: client.get("/api/holdouts", headers=headers),
        "holdout_results": lambda: client.get(f"/api/holdouts/{holdout_id}/results", headers=headers),
        "request_approval": lambda: client.post(f"/api/experiments/{eid}/approval-requests", json={}, headers=headers),
        "approve": lambda: client.post(f"/api/experiments/{eid}/approve", json={"comment": "ok"}, headers=headers),
        "reject": lambda: client.post(f"/api/experiments/{eid}/reject", json={"comment": "no"}, headers=headers),
        "list_approvals": lambda: client.get("/api/approval-requests?status=pending", headers=headers),
        "schedules": lambda: client.get("/api/schedules", headers=headers),
        "plan": lambda: client.post("/api/planning/sample-size", json=PLAN, headers=headers),
    }
    return calls[action]()


def _setup(client, auth, action, experiment):
    """State some cells need: a holdout to read, a pending request by someone else to decide."""
    if action == "holdout_results":
        response = client.post("/api/holdouts", json={"name": "long-term", "percent": 5}, headers=auth("ops_admin"))
        return {"holdout_id": response.get_json()["id"]}
    if action in ("approve", "reject"):
        response = client.post(
            f"/api/experiments/{experiment['id']}/approval-requests", json={}, headers=auth("marketing", sub="requester")
        )
        assert response.status_code == 201, response.get_json()
    return {}


def test_matrix_module_matches_the_contract():
    assert set(EXPECTED) == set(rbac.MATRIX)
    for action, roles in EXPECTED.items():
        for role in ROLES:
            assert rbac.allowed(action, [role]) == (role in roles), (action, role)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_rbac_cell(client, auth, create_experiment, action, role):
    experiment = create_experiment(start=action in ("stop", "pause_variant", "assign", "track", "results", "insights"))
    response = _request(client, action, experiment, auth(role), _setup(client, auth, action, experiment))
    if role in EXPECTED[action]:
        assert response.status_code not in (401, 403, 404, 405), (action, role, response.get_json())
    else:
        assert response.status_code == 403, (action, role, response.status_code)
        assert response.get_json()["code"] == 403


@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_every_endpoint_needs_a_token(client, create_experiment, action):
    experiment = create_experiment()
    response = _request(client, action, experiment, {})
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides):
    now = int(time.time())
    claims = {"sub": "attacker", "roles": ["ops_admin"], "iat": now, "exp": now + 600, "iss": TEST_ISSUER, "aud": TEST_AUDIENCE}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _forged_tokens(make_token, key_pair):
    private_pem, public_pem = key_pair
    good = make_token("marketing")
    header, payload, signature = good.split(".")
    tampered_payload = _b64({**json.loads(base64.urlsafe_b64decode(payload + "==")), "roles": ["ops_admin"]})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
        "HS256 with the public key as secret": _hs256(public_pem, _claims()),
        "expired": make_token("ops_admin", ttl_s=-120),
        "wrong issuer": make_token("ops_admin", issuer="https://evil.example"),
        "wrong audience": make_token("ops_admin", audience="someone-else"),
        "no audience": make_token("ops_admin", audience=None),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "missing roles": jwt.encode(_claims(roles=None), private_pem, algorithm="RS256"),
        "empty roles": jwt.encode(_claims(roles=[]), private_pem, algorithm="RS256"),
        "roles not a list": jwt.encode(_claims(roles="ops_admin"), private_pem, algorithm="RS256"),
        "missing exp": jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, private_pem, algorithm="RS256"),
        "missing sub": jwt.encode({k: v for k, v in _claims().items() if k != "sub"}, private_pem, algorithm="RS256"),
        "signed by another key": jwt.encode(_claims(), other_key, algorithm="RS256"),
        "garbage": "not-a-jwt",
    }


def _hs256(secret: str, claims: dict) -> str:
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


ATTACKS = [
    "alg none", "HS256 with the public key as secret", "expired", "wrong issuer", "wrong audience", "no audience",
    "tampered payload", "missing roles", "empty roles", "roles not a list", "missing exp", "missing sub",
    "signed by another key", "garbage",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_jwt_attacks_are_401(client, make_token, key_pair, attack):
    token = _forged_tokens(make_token, key_pair)[attack]
    response = client.get("/api/experiments", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, attack
    body = response.get_json()
    assert body["code"] == 401 and body["message"]


def test_wrong_scheme_is_401(client, make_token):
    response = client.get("/api/experiments", headers={"Authorization": f"Basic {make_token()}"})
    assert response.status_code == 401


def test_any_module_role_is_a_service_role():
    assert rbac.allowed("assign", ["eats_module"])
    assert not rbac.allowed("assign", ["_module"])
    assert not rbac.allowed("create", ["pay_module"])


def test_valid_token_with_unknown_role_is_403(client, auth):
    response = client.get("/api/experiments", headers=auth("intern"))
    assert response.status_code == 403


def test_request_id_is_echoed(client, auth):
    rid = uuid.uuid4().hex
    response = client.get("/api/experiments", headers={**auth(), "X-Request-ID": rid})
    assert response.headers["X-Request-ID"] == rid

"""Rate limiting of the assignment endpoints: per caller sub, 429 with Retry-After."""
from __future__ import annotations

import pytest

from core import db


@pytest.fixture
def limited_client(settings, app):
    from api import create_app

    limited = create_app(settings.with_overrides(assign_rate_limit="5/minute"))
    limited.config["TESTING"] = True
    try:
        yield limited.test_client()
    finally:
        db.init_engine(settings.database_url)


def test_budget_per_caller_sub_then_429(limited_client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    url = f"/api/experiments/{experiment['id']}/assign"
    pay = auth("pay_module", sub="pay-service")
    for n in range(4):
        assert limited_client.post(url, json={"molam_id": f"u{n}"}, headers=pay).status_code == 200
    # The lookup shares the caller's budget.
    assert limited_client.get(f"/api/experiments/{experiment['id']}/assignment/u0", headers=pay).status_code == 200
    refused = limited_client.post(url, json={"molam_id": "u9"}, headers=pay)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    payload = refused.get_json()
    assert payload["code"] == 429 and payload["status"] == "Too Many Requests"
    assert "5 per 1 minute" in payload["message"]
    assert limited_client.get(f"/api/experiments/{experiment['id']}/assignment/u0", headers=pay).status_code == 429
    # Another caller has its own budget; a refused request stored nothing.
    other = auth("connect_module", sub="connect-service")
    assert limited_client.post(url, json={"molam_id": "u9"}, headers=other).get_json()["new"] is True


def test_unauthenticated_requests_do_not_spend_budget(limited_client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    url = f"/api/experiments/{experiment['id']}/assign"
    for _ in range(10):
        assert limited_client.post(url, json={"molam_id": "u"}).status_code == 401
    assert limited_client.post(url, json={"molam_id": "u"}, headers=auth("pay_module", sub="fresh")).status_code == 200


def test_rate_limit_can_be_disabled(settings, app, auth, create_experiment):
    from api import create_app

    unlimited = create_app(settings.with_overrides(assign_rate_limit="1/minute", rate_limit_enabled=False)).test_client()
    try:
        experiment = create_experiment(start=True, targeting={})
        headers = auth("pay_module", sub="bulk")
        for n in range(5):
            response = unlimited.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": f"u{n}"}, headers=headers)
            assert response.status_code == 200
    finally:
        db.init_engine(settings.database_url)

"""Degraded modes: Redis or PostgreSQL unreachable (an app pointed at a closed port)."""
from __future__ import annotations

import psycopg
import pytest

from core import db
from core.config import libpq_url
from core.redis import get_redis
from services.cache import assignment_key, definition_key

CLOSED_REDIS = "redis://127.0.0.1:1/0"
CLOSED_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/molam_experiments_test_closed"


@pytest.fixture
def headers(auth):
    return auth("pay_module", sub="degraded-svc")


def _count(settings, experiment_id, molam_id=None):
    plain = libpq_url(settings.database_url)
    with psycopg.connect(plain) as conn:
        query = "SELECT count(*), count(DISTINCT variant_id) FROM experiment_assignments WHERE experiment_id = %s"
        params: tuple = (experiment_id,)
        if molam_id is not None:
            query += " AND molam_id = %s"
            params += (molam_id,)
        return conn.execute(query, params).fetchone()


@pytest.fixture
def redis_down_client(settings, app):
    from api import create_app

    degraded = create_app(settings.with_overrides(redis_url=CLOSED_REDIS, celery_broker_url=CLOSED_REDIS))
    degraded.config["TESTING"] = True
    try:
        yield degraded.test_client()
    finally:
        db.init_engine(settings.database_url)


@pytest.fixture
def postgres_down_client(settings, app):
    """Build (on call) an app whose PostgreSQL is a closed port.

    The engine is per process, so from then on PostgreSQL is gone for every app in
    this process, which is what an outage looks like; the original is restored after.
    """
    from api import create_app

    def build():
        degraded = create_app(settings.with_overrides(database_url=CLOSED_POSTGRES))
        degraded.config["TESTING"] = True
        return degraded.test_client()

    try:
        yield build
    finally:
        db.init_engine(settings.database_url)


def test_redis_down_assigns_from_postgres_and_stays_sticky(client, create_experiment, settings, headers, redis_down_client):
    experiment = create_experiment(start=True, targeting={}, mode="bandit")
    # Assigned while Redis was up...
    before = {f"r-{n}": client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": f"r-{n}"}, headers=headers).get_json() for n in range(10)}
    # ...and answered by an API process that cannot reach Redis.
    for molam_id, first in before.items():
        response = redis_down_client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": molam_id}, headers=headers)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["variant_id"] == first["variant_id"]
        assert response.get_json()["new"] is False
    # New users are assigned from PostgreSQL alone, and stay sticky there.
    for n in range(10):
        first = redis_down_client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": f"new-{n}"}, headers=headers)
        assert first.status_code == 200 and first.get_json()["new"] is True
        again = redis_down_client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": f"new-{n}"}, headers=headers)
        assert again.get_json()["variant_id"] == first.get_json()["variant_id"] and again.get_json()["new"] is False
        # When Redis is back, the healthy process answers the same.
        healthy = client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": f"new-{n}"}, headers=headers)
        assert healthy.get_json()["variant_id"] == first.get_json()["variant_id"]
        assert _count(settings, experiment["id"], f"new-{n}") == (1, 1)
    lookup = redis_down_client.get(f"/api/experiments/{experiment['id']}/assignment/new-0", headers=headers)
    assert lookup.status_code == 200
    readiness = redis_down_client.get("/readyz")
    assert readiness.status_code == 503
    assert readiness.get_json()["checks"]["redis"] == "down"
    assert readiness.get_json()["checks"]["postgres"] == "ok"


def test_redis_down_honours_stop(client, auth, create_experiment, headers, redis_down_client):
    experiment = create_experiment(start=True, targeting={})
    assert client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin")).status_code == 200
    response = redis_down_client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "u"}, headers=headers)
    assert response.status_code == 409


def test_postgres_down_serves_cached_and_refuses_new(client, create_experiment, settings, headers, postgres_down_client):
    experiment = create_experiment(start=True, targeting={})
    other = create_experiment(start=True, targeting={}, name="Not cached")
    known = client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "known"}, headers=headers).get_json()
    redis_client = get_redis(settings.redis_url)
    redis_client.delete(definition_key(other["id"]))
    assert redis_client.get(assignment_key(experiment["id"], "known")) is not None

    postgres_down = postgres_down_client()
    cached = postgres_down.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "known"}, headers=headers)
    assert cached.status_code == 200
    assert cached.get_json()["variant_id"] == known["variant_id"] and cached.get_json()["new"] is False
    lookup = postgres_down.get(f"/api/experiments/{experiment['id']}/assignment/known", headers=headers)
    assert lookup.status_code == 200 and lookup.get_json()["variant_id"] == known["variant_id"]

    newcomer = postgres_down.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "newcomer"}, headers=headers)
    assert newcomer.status_code == 503
    assert int(newcomer.headers["Retry-After"]) >= 1
    assert newcomer.get_json()["code"] == 503 and "PostgreSQL" in newcomer.get_json()["message"]
    assert redis_client.get(assignment_key(experiment["id"], "newcomer")) is None

    uncached = postgres_down.post(f"/api/experiments/{other['id']}/assign", json={"molam_id": "known"}, headers=headers)
    assert uncached.status_code == 503 and "Retry-After" in uncached.headers
    missing = postgres_down.get(f"/api/experiments/{experiment['id']}/assignment/newcomer", headers=headers)
    assert missing.status_code == 503

    # PostgreSQL back: the newcomer gets exactly one variant, the known user keeps theirs.
    db.init_engine(settings.database_url)
    again = client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "known"}, headers=headers).get_json()
    assert again["variant_id"] == known["variant_id"]
    fresh = client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": "newcomer"}, headers=headers)
    assert fresh.status_code == 200 and fresh.get_json()["new"] is True
    assert _count(settings, experiment["id"]) == (2, len({known["variant_id"], fresh.get_json()["variant_id"]}))

from __future__ import annotations

from api import create_app


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_ok(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"postgres": "ok", "redis": "ok", "broker": "ok"}


def test_readyz_names_what_is_down(settings, migrated_database):
    broken = create_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))
    response = broken.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"] == {"postgres": "ok", "redis": "down", "broker": "ok"}
    assert "redis" in body["message"]


def test_readyz_postgres_down(settings, migrated_database):
    from core import db

    broken = create_app(settings.with_overrides(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"))
    try:
        response = broken.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["checks"]["postgres"] == "down"
    finally:
        db.init_engine(settings.database_url)


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["info"]["title"].startswith("Molam Experiments")
    assert "/api/experiments" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_metrics_count_experiments_by_status(client, create_experiment):
    create_experiment()
    create_experiment(start=True)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'experiments_total{status="draft"} 1.0' in text
    assert 'experiments_total{status="running"} 1.0' in text
    assert 'experiments_total{status="archived"} 0.0' in text


def test_openapi_numeric_bounds_are_numbers(client):
    spec = client.get("/openapi.json").get_json()
    for name, schema in spec["components"]["schemas"].items():
        for prop, definition in schema.get("properties", {}).items():
            for key in ("minimum", "maximum", "default"):
                if definition.get("type") == "number" and key in definition:
                    assert isinstance(definition[key], (int, float)), (name, prop, key)


def test_metrics_token_guards_the_scrape(settings, migrated_database, client):
    from api import create_app

    guarded = create_app(settings.with_overrides(metrics_token="s3cret-scrape-token")).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-scrape-token"}):
        refused = guarded.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        body = refused.get_json()
        assert body["code"] == 401 and body["message"] in {"missing bearer token", "invalid token"}
        assert "experiments" not in refused.get_data(as_text=True).split("message")[0]
    scraped = guarded.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
    assert scraped.status_code == 200 and "experiments_total" in scraped.get_data(as_text=True)
    # Without METRICS_TOKEN the endpoint stays open (the default).
    assert client.get("/metrics").status_code == 200

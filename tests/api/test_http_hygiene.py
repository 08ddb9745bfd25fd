"""HTTP hygiene: security headers everywhere, request ids, readiness without details, local API docs, CSV export."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from html.parser import HTMLParser

import flask_smorest
import psycopg
import pytest

from api import create_app, input_guard
from api.export import FORMULA_PREFIXES
from api.headers import SECURITY_HEADERS
from api.openapi_ui import ASSETS
from core.config import libpq_url

# --------------------------------------------------------------------------- security headers


@pytest.mark.parametrize(
    ("method", "path", "role", "status"),
    [
        ("GET", "/api/experiments", "ops_admin", 200),
        ("GET", "/api/experiments", None, 401),
        ("GET", "/api/experiments/not-a-uuid", "ops_admin", 404),
        ("POST", "/api/experiments", "ops_admin", 422),
        ("GET", "/healthz", None, 200),
        ("GET", "/openapi.json", None, 200),
        ("GET", "/docs", None, 200),
        ("GET", "/redoc", None, 200),
        ("GET", "/ops", None, 200),
        ("GET", "/ops/static/app.js", None, 200),
        ("GET", "/no/such/page", None, 404),
    ],
)
def test_every_response_carries_the_security_headers(client, auth, method, path, role, status):
    response = client.open(path, method=method, headers=auth(role) if role else {}, json={} if method == "POST" else None)
    assert response.status_code == status
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, name)


def test_the_dashboard_keeps_its_stricter_policy(client):
    policy = client.get("/ops").headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy


# --------------------------------------------------------------------------- request ids


@pytest.mark.parametrize("header", ["req-42", "a" * 128, "trace:abc.def_1-2"])
def test_a_safe_request_id_is_kept(client, auth, header):
    assert client.get("/api/experiments", headers={**auth(), "X-Request-ID": header}).headers["X-Request-ID"] == header


@pytest.mark.parametrize("header", ["", "a" * 129, "has space", 'quote"', "semi;colon", "new\\nline", "caf\u00e9", "<script>"])
def test_an_unsafe_request_id_is_replaced(client, auth, header):
    echoed = client.get("/api/experiments", headers={**auth(), "X-Request-ID": header}).headers["X-Request-ID"]
    assert echoed != header and re.fullmatch(r"[0-9a-f]{32}", echoed)


# --------------------------------------------------------------------------- readiness


def test_readyz_names_components_without_hosts_ports_or_driver_messages(settings, migrated_database):
    from core import db

    broken = create_app(settings.with_overrides(
        database_url="postgresql+psycopg://molam:s3cret-pw@127.0.0.1:1/nowhere",
        redis_url="redis://:r3dis-pw@127.0.0.1:2/0",
    ))
    try:
        response = broken.test_client().get("/readyz")
    finally:
        db.init_engine(settings.database_url)
    assert response.status_code == 503
    body = response.get_json()
    assert body["errors"] == {"postgres": "unreachable", "redis": "unreachable"}
    assert body["checks"] == {"postgres": "down", "redis": "down", "broker": "ok"}
    text = response.get_data(as_text=True)
    for leak in ("127.0.0.1", ":1", ":2", "s3cret", "r3dis", "molam", "nowhere", "refused", "Error"):
        assert leak not in text, leak


# --------------------------------------------------------------------------- OpenAPI UIs


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_nothing_from_another_host(client, page):
    response = client.get(page)
    html = response.get_data(as_text=True)
    assert "http:" not in html and "https:" not in html
    parser = _References()
    parser.feed(html)
    assert parser.urls, html
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        if url != "/openapi.json":
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.get_data()) > 10_000, url
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "http" not in policy and "frame-ancestors 'none'" in policy


def test_vendored_assets_are_the_pinned_releases():
    """web/openapi/README.md pins each file's release and SHA-256; the files are those bytes."""
    readme = (ASSETS / "README.md").read_text()
    assert re.search(r"swagger-ui-dist@\d+\.\d+\.\d+", readme) and re.search(r"redoc@\d+\.\d+\.\d+", readme)
    for name in ("swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui-standalone-preset.js",
                 "swagger-ui/swagger-ui.css", "redoc/redoc.standalone.js"):
        digest = re.search(rf"([0-9a-f]{{64}})  {re.escape(name)}", readme)
        assert digest, name
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest.group(1), name


# --------------------------------------------------------------------------- every body reader goes through the guard


def test_every_api_blueprint_reads_bodies_through_the_guard(app):
    smorest = [bp for bp in app.blueprints.values() if isinstance(bp, flask_smorest.Blueprint)]
    assert len(smorest) >= 15
    for blueprint in smorest:
        assert isinstance(blueprint, input_guard.Blueprint), blueprint.name
        assert isinstance(blueprint.ARGUMENTS_PARSER, input_guard.GuardedParser), blueprint.name


# --------------------------------------------------------------------------- CSV export

HOSTILE_TEXT = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tTab", "\rReturn"]


def test_csv_export_neutralises_formula_cells(client, auth, settings, create_experiment):
    variants = [
        {"name": HOSTILE_TEXT[0], "config": {"=k": "=v"}, "traffic_share": 50, "is_control": True},
        {"name": HOSTILE_TEXT[4], "config": {}, "traffic_share": 50},
    ]
    experiment = create_experiment(start=True, name="=experiment()", targeting={}, variants=variants)
    variant = experiment["variants"][0]["id"]
    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        for text in HOSTILE_TEXT:
            conn.execute(
                "INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id, region, device) VALUES (%s, %s, %s, %s, %s)",
                (experiment["id"], variant, text, text, "safe"),
            )
            conn.execute(
                "INSERT INTO experiment_metrics (event_id, experiment_id, variant_id, molam_id, event_type, value, metadata, "
                "occurred_at, received_at) VALUES (%s, %s, %s, %s, 'conversion', -5, %s, now(), now())",
                (text, experiment["id"], variant, text, json.dumps({"=note": text})),
            )
    headers = auth("data_science")
    events = list(csv.DictReader(io.StringIO(
        client.get(f"/api/experiments/{experiment['id']}/export", headers=headers).get_data(as_text=True), newline="")))
    assert sorted(row["molam_id"] for row in events) == sorted("'" + text for text in HOSTILE_TEXT)
    assert {row["event_id"][0] for row in events} == {"'"}
    assert {row["value"] for row in events} == {"-5"}, "numbers are never prefixed"
    assert all(json.loads(row["metadata"])["=note"] in HOSTILE_TEXT for row in events), "JSON cells start with {"
    assignments = list(csv.DictReader(io.StringIO(client.get(
        f"/api/experiments/{experiment['id']}/export?kind=assignments", headers=headers).get_data(as_text=True), newline="")))
    assert {row["variant_name"] for row in assignments} == {"'" + HOSTILE_TEXT[0]}
    assert sorted(row["region"] for row in assignments) == sorted("'" + text for text in HOSTILE_TEXT)
    assert {row["device"] for row in assignments} == {"safe"}
    for row in events + assignments:
        for cell in row.values():
            assert not cell.startswith(FORMULA_PREFIXES) or re.fullmatch(r"-\d+(\.\d+)?", cell), cell
    # NDJSON is data, not a spreadsheet: the values come back unchanged.
    lines = client.get(f"/api/experiments/{experiment['id']}/export?kind=assignments&format=ndjson", headers=headers)
    assert sorted(json.loads(line)["molam_id"] for line in lines.get_data(as_text=True).splitlines()) == sorted(HOSTILE_TEXT)


def test_unknown_ids_still_404_through_the_guard(client, auth):
    assert client.get(f"/api/experiments/{uuid.uuid4()}/export", headers=auth()).status_code == 404

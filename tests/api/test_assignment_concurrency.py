"""200 simultaneous first calls for one user over real HTTP: one variant stored, one returned."""
from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from werkzeug.serving import make_server

from core.config import libpq_url

pytestmark = pytest.mark.slow

CALLS = 200


@pytest.fixture
def http_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.parametrize("mode", ["bandit", "ab"])
def test_concurrent_first_calls_store_one_variant(http_server, auth, create_experiment, settings, mode):
    # Bandit mode draws at random per request, so racing requests genuinely disagree
    # about the variant before the database settles it.
    variants = [
        {"name": "A", "traffic_share": 34, "is_control": True},
        {"name": "B", "traffic_share": 33},
        {"name": "C", "traffic_share": 33},
    ]
    experiment = create_experiment(start=True, targeting={}, mode=mode, variants=variants)
    headers = {**auth("pay_module", sub="race-svc"), "Content-Type": "application/json"}
    body = json.dumps({"molam_id": "racer"}).encode()
    start = threading.Barrier(CALLS)

    def call(_: int) -> tuple[int, dict]:
        request = urllib.request.Request(f"{http_server}/api/experiments/{experiment['id']}/assign", data=body, headers=headers, method="POST")
        start.wait(timeout=60)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())

    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        results = list(pool.map(call, range(CALLS)))

    assert {status for status, _ in results} == {200}
    variant_ids = {answer["variant_id"] for _, answer in results}
    assert len(variant_ids) == 1
    assert sum(answer["new"] for _, answer in results) == 1
    assert len({answer["assigned_at"] for _, answer in results}) == 1
    plain = libpq_url(settings.database_url)
    with psycopg.connect(plain) as conn:
        rows = conn.execute(
            "SELECT variant_id::text FROM experiment_assignments WHERE experiment_id = %s AND molam_id = 'racer'", (experiment["id"],)
        ).fetchall()
    assert rows == [(variant_ids.pop(),)]

"""Rate limiting of the assignment endpoints: per caller sub, 429 with Retry-After.

The budget is counted inside the assignment's own Redis call (one counter for
every process), and falls back to a per-process share when Redis is unreachable.
The cross-process test runs the real server: gunicorn with several workers.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core import db
from core.config import PROJECT_ROOT
from core.redis import get_redis

CLOSED_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def limited_client(settings, app):
    from api import create_app

    limited = create_app(settings.with_overrides(assign_rate_limit="5/minute"))
    limited.config["TESTING"] = True
    try:
        yield limited.test_client()
    finally:
        db.init_engine(settings.database_url)


def test_budget_per_caller_sub_then_429(limited_client, auth, create_experiment, settings):
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
    # The counter is one Redis key with the window as its lifetime.
    ttl = get_redis(settings.redis_url).ttl("ratelimit:assign:pay-service")
    assert 0 < ttl <= 60
    # Another caller has its own budget; a refused request stored nothing.
    other = auth("connect_module", sub="connect-service")
    assert limited_client.post(url, json={"molam_id": "u9"}, headers=other).get_json()["new"] is True


def test_unauthenticated_and_malformed_requests_do_not_spend_budget(limited_client, auth, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    url = f"/api/experiments/{experiment['id']}/assign"
    for _ in range(10):
        assert limited_client.post(url, json={"molam_id": "u"}).status_code == 401
    headers = auth("pay_module", sub="fresh")
    for _ in range(10):
        assert limited_client.post(url, json={"molam_id": ""}, headers=headers).status_code == 422
    for n in range(5):
        assert limited_client.post(url, json={"molam_id": f"u{n}"}, headers=headers).status_code == 200
    assert limited_client.post(url, json={"molam_id": "u"}, headers=headers).status_code == 429


def test_window_resets(settings, app, auth, create_experiment):
    from api import create_app

    limited = create_app(settings.with_overrides(assign_rate_limit="2/second")).test_client()
    try:
        experiment = create_experiment(start=True, targeting={})
        url = f"/api/experiments/{experiment['id']}/assign"
        headers = auth("pay_module", sub="resets")
        statuses = [limited.post(url, json={"molam_id": "u"}, headers=headers).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        time.sleep(1.1)
        assert limited.post(url, json={"molam_id": "u"}, headers=headers).status_code == 200
    finally:
        db.init_engine(settings.database_url)


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


def test_redis_down_fails_open_to_a_per_process_share(settings, app, auth, create_experiment):
    """Without Redis each process admits ``limit / worker_processes`` per window (PostgreSQL answers)."""
    from api import create_app

    experiment = create_experiment(start=True, targeting={})
    degraded = create_app(
        settings.with_overrides(
            redis_url=CLOSED_REDIS, celery_broker_url=CLOSED_REDIS, assign_rate_limit="8/minute", worker_processes=2
        )
    ).test_client()
    try:
        url = f"/api/experiments/{experiment['id']}/assign"
        headers = auth("pay_module", sub="offline")
        statuses = [degraded.post(url, json={"molam_id": f"u{n}"}, headers=headers).status_code for n in range(6)]
        assert statuses == [200] * 4 + [429] * 2
        refused = degraded.post(url, json={"molam_id": "u0"}, headers=headers)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "8 per 1 minute" in refused.get_json()["message"]
        # Another caller's share is its own.
        assert degraded.post(url, json={"molam_id": "v"}, headers=auth("pay_module", sub="other")).status_code == 200
    finally:
        db.init_engine(settings.database_url)


# --- the real server: gunicorn, several worker processes, one Redis ------------------------

WORKERS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gunicorn_server(settings, migrated_database, tmp_path, key_pair):
    """The API as production runs it (``gunicorn -c gunicorn.conf.py``), limit 400 per hour per caller."""
    port = _free_port()
    env = dict(
        os.environ,
        APP_ENV="production",
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        CELERY_BROKER_URL=settings.celery_broker_url,
        MOLAM_ID_PUBLIC_KEY=key_pair[1],
        MOLAM_ID_ISSUER=settings.molam_id_issuer,
        MOLAM_ID_AUDIENCE=settings.molam_id_audience,
        AUDIT_HMAC_KEY=settings.audit_hmac_key,
        ASSIGN_RATE_LIMIT="400/hour",
        WEB_CONCURRENCY=str(WORKERS),
        MOLAM_VAR_DIR=str(tmp_path),
    )
    gunicorn = Path(sys.executable).parent / "gunicorn"
    process = subprocess.Popen(
        [str(gunicorn), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "api.wsgi:app"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # four workers importing the app on a loaded machine
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError as exc:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("gunicorn did not start") from exc
                time.sleep(0.2)
        yield base, process
    finally:
        process.send_signal(signal.SIGQUIT)  # gunicorn's quick shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _worker_cpu(master: subprocess.Popen) -> dict[int, float]:
    import psutil

    return {child.pid: sum(child.cpu_times()[:2]) for child in psutil.Process(master.pid).children()}


def test_budget_holds_across_gunicorn_workers(gunicorn_server, auth, create_experiment):
    base, master = gunicorn_server
    idle = _worker_cpu(master)
    experiment = create_experiment(start=True, targeting={})
    url = f"{base}/api/experiments/{experiment['id']}/assign"
    headers = auth("pay_module", sub="many-workers")
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda n: _post(url, {"molam_id": f"u{n % 300}"}, headers), range(1000)))
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429}
    admitted = statuses.count(200)
    assert abs(admitted - 400) <= 4, admitted  # within 1 % of the budget
    # Several processes answered (each spent CPU on the load): per-process counting
    # would have admitted up to 4 x 400.
    busy = {pid for pid, cpu in _worker_cpu(master).items() if cpu - idle.get(pid, 0.0) > 0.05}
    assert len(busy) >= 2, busy
    # Another caller is untouched by the first one's spending.
    assert _post(url, {"molam_id": "x"}, auth("pay_module", sub="someone-else"))[0] == 200


def test_concurrent_first_calls_under_gunicorn_store_one_variant(gunicorn_server, auth, create_experiment, settings):
    """200 simultaneous first calls for one user across the worker processes of the real server."""
    import threading

    import psycopg

    base, _ = gunicorn_server
    experiment = create_experiment(start=True, targeting={}, mode="bandit", variants=[
        {"name": "A", "traffic_share": 34, "is_control": True}, {"name": "B", "traffic_share": 33}, {"name": "C", "traffic_share": 33},
    ])
    url = f"{base}/api/experiments/{experiment['id']}/assign"
    headers = auth("pay_module", sub="racers")
    barrier = threading.Barrier(200)

    def call(_: int) -> tuple[int, dict]:
        barrier.wait(timeout=60)
        return _post(url, {"molam_id": "racer"}, headers)

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(call, range(200)))
    assert {status for status, _ in results} == {200}
    assert len({answer["variant_id"] for _, answer in results}) == 1
    assert sum(answer["new"] for _, answer in results) == 1
    plain = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        rows = conn.execute(
            "SELECT variant_id::text FROM experiment_assignments WHERE experiment_id = %s AND molam_id = 'racer'", (experiment["id"],)
        ).fetchall()
    assert rows == [(results[0][1]["variant_id"],)]

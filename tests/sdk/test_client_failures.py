"""Failure modes of the client, each against the real API behind a fault-injecting proxy."""
from __future__ import annotations

import socket
import time

from core.config import libpq_url
from molam_experiments import Client


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_unreachable_at_start_without_bootstrap_answers_unavailable(service_token):
    client = Client(_dead_url(), service_token, refresh=0.2, start_timeout_s=0.5, timeout_s=0.5)
    try:
        answer = client.assign("00000000-0000-0000-0000-000000000001", "u1", country="SN")
        assert not answer.eligible and answer.reason == "unavailable" and answer.variant_id is None
        status = client.status()
        assert status["ready"] is False and status["definitions"]["source"] is None and status["last_error"]
    finally:
        client.close(timeout_s=1)


def test_unreachable_at_start_uses_the_bootstrap_file(tmp_path, live_api, service_token, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    online = Client(live_api, service_token, refresh=60)
    expected = {u: online.assign(experiment["id"], u).variant_id for u in (f"u{i}" for i in range(50))}
    path = tmp_path / "definitions.json"
    assert online.save_bootstrap(path)
    online.close(timeout_s=5)
    offline = Client(_dead_url(), service_token, refresh=0.2, bootstrap_path=path, start_timeout_s=0.5, timeout_s=0.5)
    try:
        assert {u: offline.assign(experiment["id"], u).variant_id for u in expected} == expected
        status = offline.status()
        assert status["definitions"]["source"] == "bootstrap" and status["definitions"]["stale"] is True
    finally:
        offline.close(timeout_s=0.5)


def test_stale_definitions_keep_serving_and_say_so(faulty_proxy, service_token, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    client = Client(faulty_proxy.url, service_token, refresh=0.1, stale_after_s=0.5, timeout_s=0.5)
    try:
        before = client.assign(experiment["id"], "steady")
        assert client.status()["definitions"]["stale"] is False
        faulty_proxy.down = True
        assert _wait(lambda: client.status()["definitions"]["stale"], 5)
        after = client.assign(experiment["id"], "steady")
        assert after.eligible and after.variant_id == before.variant_id and after.source == "local"
        faulty_proxy.down = False
        assert _wait(lambda: not client.status()["definitions"]["stale"], 5)
    finally:
        faulty_proxy.down = False
        client.close(timeout_s=5)


def test_upload_errors_are_retried_with_backoff_without_blocking_assign(faulty_proxy, service_token, create_experiment, settings):
    experiment = create_experiment(start=True, targeting={})
    faulty_proxy.fail["/api/assignments/batch"] = 3
    client = Client(faulty_proxy.url, service_token, refresh=60, exposure_flush_interval_s=0.05,
                    backoff_base_s=0.05, backoff_cap_s=0.2)
    try:
        started = time.perf_counter()
        answers = [client.assign(experiment["id"], f"r{i}") for i in range(200)]
        assert time.perf_counter() - started < 1.0  # no network on the path, failures or not
        assert client.flush(timeout_s=10)
        status = client.status()["exposures"]
        assert status["failed_uploads"] >= 3 and status["sent"] == 200 and status["queued"] == 0
        assert faulty_proxy.requests.count("POST /api/assignments/batch") >= 4
        import psycopg

        with psycopg.connect(libpq_url(settings.database_url)) as conn:
            stored = dict(conn.execute(
                "SELECT molam_id, variant_id::text FROM experiment_assignments WHERE experiment_id = %s", (experiment["id"],)
            ).fetchall())
        assert stored == {a.molam_id: a.variant_id for a in answers}
    finally:
        client.close(timeout_s=5)


def test_a_full_queue_drops_and_counts(faulty_proxy, service_token, create_experiment):
    experiment = create_experiment(start=True, targeting={})
    client = Client(faulty_proxy.url, service_token, refresh=60, exposure_queue_size=10, exposure_batch_size=10,
                    exposure_flush_interval_s=30, timeout_s=0.5)
    try:
        faulty_proxy.down = True
        for i in range(25):
            client.assign(experiment["id"], f"q{i}")
        status = client.status()["exposures"]
        assert status["dropped"] + status["queued"] + status["sent"] >= 15
        assert status["dropped"] >= 5
    finally:
        faulty_proxy.down = False
        client.close(timeout_s=5)


def test_server_decisions_degrade_to_unavailable(faulty_proxy, service_token, create_experiment):
    bandit = create_experiment(start=True, mode="bandit", targeting={})
    client = Client(faulty_proxy.url, service_token, refresh=60, timeout_s=0.5)
    try:
        faulty_proxy.down = True
        answer = client.assign(bandit["id"], "b")
        assert not answer.eligible and answer.reason == "unavailable" and answer.source == "client"
        assert client.status()["server_assign"]["errors"] == 1
    finally:
        faulty_proxy.down = False
        client.close(timeout_s=2)

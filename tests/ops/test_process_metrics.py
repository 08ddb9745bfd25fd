"""Metrics and logs of every process, scraped from real ones: a 2-worker gunicorn and a
Celery worker (with its embedded beat), against the test PostgreSQL and Redis.

Counts are exact: the assignments and accepted events summed over both gunicorn
workers, the persisted events, duplicates and dead letters summed over the Celery
pool processes; SIRA's per-arm gauges appear for a running experiment and vanish
once it stops; and every line the processes log is a JSON object with its request id.
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
from prometheus_client.parser import text_string_to_metric_families

from core.config import PROJECT_ROOT, redis_url_with_db
from core.redis import get_redis
from services.ingestion import staging
from tests.support.ingestion import count_rows
from tests.support.waiting import wait_for as _wait_for

pytestmark = pytest.mark.slow
SERVICE = "pay_module"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str) -> None:
    """Scrapes and readiness probes fail with connection errors until the process listens."""
    _wait_for(condition, timeout, what, interval=0.2, ignore=(OSError, urllib.error.URLError))


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: dict, name: str) -> list[dict]:
    return [dict(labels) for (sample_name, labels) in samples if sample_name == name]


@pytest.fixture
def processes(settings, key_pair, tmp_path):
    broker = os.environ.get("TEST_BROKER_URL") or redis_url_with_db(settings.redis_url, 14)
    get_redis(broker).flushdb()
    api_port, worker_port = free_port(), free_port()
    env = {
        **os.environ,
        "MOLAM_ENV_FILE": "",
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CELERY_BROKER_URL": broker,
        "MOLAM_ID_PUBLIC_KEY": key_pair[1],
        "MOLAM_ID_ISSUER": settings.molam_id_issuer,
        "MOLAM_ID_AUDIENCE": settings.molam_id_audience,
        "MOLAM_VAR_DIR": str(tmp_path / "var"),
        "LOG_FORMAT": "json",
        "INGEST_DRAIN_INTERVAL": "0.5",
        "SIRA_RECOMPUTE_INTERVAL": "1",
        "WORKER_METRICS_PORT": str(worker_port),
        "BEAT_METRICS_PORT": "0",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker")}
    started = [
        subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-w", "2", "--threads", "2",
             "-b", f"127.0.0.1:{api_port}", "api.wsgi:app"],
            cwd=PROJECT_ROOT, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom-api")},
            stdout=open(logs["api"], "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        ),
        subprocess.Popen(
            [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "-B", "-s", str(tmp_path / "beat-schedule"),
             "--concurrency=2", "--loglevel=INFO", "-n", f"metrics-{os.getpid()}@%h"],
            cwd=PROJECT_ROOT, env=env,
            stdout=open(logs["worker"], "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        ),
    ]
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(lambda: http("GET", f"{base}/readyz")[0] == 200, 60, "gunicorn to be ready")
        wait_for(lambda: scrape(f"http://127.0.0.1:{worker_port}/metrics") is not None, 60, "the worker's exporter")
        yield {"api": base, "worker": f"http://127.0.0.1:{worker_port}/metrics", "logs": logs, "tmp": tmp_path}
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_every_process_exports_exact_counts_and_logs_json(processes, client, auth, create_experiment, settings, make_token):
    experiment = create_experiment(start=True)
    experiment_id = experiment["id"]
    api = processes["api"]
    token = make_token(SERVICE)
    headers = {"Authorization": f"Bearer {token}"}

    # 40 users assigned through gunicorn, concurrently so both workers serve some.
    users = [f"metrics-user-{i}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda molam_id: http("POST", f"{api}/api/experiments/{experiment_id}/assign",
                                  {"molam_id": molam_id, "country": "SN", "lang": "fr"},
                                  {**headers, "X-Request-ID": f"assign-{molam_id}"})[0],
            users,
        ))
    assert statuses == [200] * 40
    # A second call for the same user is not a new assignment.
    assert http("POST", f"{api}/api/experiments/{experiment_id}/assign", {"molam_id": users[0], "country": "SN", "lang": "fr"}, headers)[0] == 200

    # 30 events (10 views, 12 clicks, 8 conversions) plus 5 resent event ids.
    plan = [("view", 10), ("click", 12), ("conversion", 8)]
    events = []
    for event_type, n in plan:
        for i in range(n):
            events.append({"event_id": f"{event_type}-{i}", "molam_id": users[i], "event_type": event_type})
    resent = events[:5]

    def track(event: dict) -> int:
        return http("POST", f"{api}/api/experiments/{experiment_id}/track", event,
                    {**headers, "X-Request-ID": f"track-{event['event_id']}"})[0]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(track, events)) == [202] * 30
    assert [track(event) for event in resent] == [202] * 5
    # An entry no API would write: a dead letter, whose request id the drain must log.
    get_redis(settings.redis_url).xadd(staging.STREAM_KEY, {"n": 1, "e": "not json", "r": "req-poison-entry"})

    wait_for(lambda: count_rows(settings, "experiment_metrics") == 30
             and count_rows(settings, "experiment_metric_dead_letters") == 1, 60, "the worker to write every event")
    wait_for(lambda: value(scrape(processes["worker"]), "ingest_events_drained_total") == 36, 30, "the worker's counters")

    worker = scrape(processes["worker"])
    for event_type, n in plan:
        assert value(worker, "experiment_metrics_total", experiment_id=experiment_id, event_type=event_type) == n
    assert value(worker, "ingest_events_inserted_total") == 30
    assert value(worker, "ingest_events_duplicates_total") == 5
    assert value(worker, "ingest_dead_letters_total") == 1
    assert value(worker, "ingest_events_drained_total") == 36
    assert value(worker, "ingest_drain_batch_seconds_count") >= 1
    assert value(worker, "ingest_drain_failures_total") == 0
    assert value(worker, "ingest_stream_up") == 1
    assert value(worker, "ingest_stream_backlog_entries") == 0
    assert value(worker, "ingest_stream_oldest_entry_age_seconds") == 0
    assert value(worker, "celery_beat_tasks_sent_total", task="ingest.drain_events") >= 1
    wait_for(lambda: value(scrape(processes["worker"]), "sira_job_runs_total", job="sira.recompute_posteriors", outcome="ok") >= 1,
             30, "a SIRA recompute")
    worker = scrape(processes["worker"])
    assert value(worker, "sira_job_duration_seconds_count", job="sira.recompute_posteriors") >= 1
    assert value(worker, "sira_job_errors_total", job="sira.recompute_posteriors") == 0

    metrics = scrape(f"{api}/metrics")
    assert value(metrics, "experiment_assignments_total", experiment_id=experiment_id) == 40
    accepted = {"view": 10 + 5, "click": 12, "conversion": 8}
    for event_type, n in accepted.items():
        assert value(metrics, "experiment_metrics_accepted_total", experiment_id=experiment_id, event_type=event_type) == n
    assert value(metrics, "experiments", status="running") == 1
    assert value(metrics, "experiments_total", status="running") == 1
    assert value(metrics, "sira_decisions_latency_seconds_count") >= 40
    variants = {v["id"]: v["name"] for v in experiment["variants"]}
    labels = {"experiment_id": experiment_id, "experiment": experiment["name"]}
    assert sum(value(metrics, "sira_arm_assigned_users", **labels, variant_id=v, variant=name) for v, name in variants.items()) == 40
    views = sum(value(metrics, "experiment_variant_users", **labels, variant_id=v, variant=name, event_type="view")
                for v, name in variants.items())
    assert views == 10
    wait_for(lambda: len(series(scrape(f"{api}/metrics"), "sira_arm_weight")) == 2, 30, "SIRA's per-arm gauges")
    for name in ("sira_arm_alpha", "sira_arm_beta", "sira_arm_prob_best"):
        assert {s["variant_id"] for s in series(scrape(f"{api}/metrics"), name)} == set(variants)

    # Stopped: the experiment's per-arm label sets are gone from the next scrape.
    assert client.post(f"/api/experiments/{experiment_id}/stop", headers=auth("ops_admin")).status_code == 200
    after = scrape(f"{api}/metrics")
    for name in ("sira_arm_weight", "sira_arm_alpha", "sira_arm_beta", "sira_arm_prob_best", "experiment_variant_users"):
        assert series(after, name) == []
    assert value(after, "experiments", status="stopped") == 1 and value(after, "experiments", status="running") == 0

    # Logs: JSON objects with the four fields; API lines carry the request id; no token anywhere.
    api_lines = [json.loads(line) for line in processes["logs"]["api"].read_text().splitlines() if line.strip()]
    worker_text = processes["logs"]["worker"].read_text()
    for line in api_lines:
        assert {"timestamp", "level", "logger", "message", "request_id"} <= set(line), line
    access = [line for line in api_lines if line["logger"] == "api.access"]
    assert {f"track-{e['event_id']}" for e in events} <= {line["request_id"] for line in access}
    worker_lines = [json.loads(line) for line in worker_text.splitlines() if line.strip().startswith("{")]
    assert worker_lines and all({"timestamp", "level", "logger", "message"} <= set(line) for line in worker_lines)
    assert any("req-poison-entry" in line["message"] and line["level"] == "WARNING" for line in worker_lines)
    for text in (processes["logs"]["api"].read_text(), worker_text):
        assert token not in text and token.split(".")[1] not in text


def test_a_standalone_beat_exports_what_it_queued(settings, tmp_path):
    broker = os.environ.get("TEST_BROKER_URL") or redis_url_with_db(settings.redis_url, 14)
    get_redis(broker).flushdb()
    port = free_port()
    env = {
        **os.environ, "MOLAM_ENV_FILE": "", "APP_ENV": "test", "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url, "CELERY_BROKER_URL": broker, "MOLAM_VAR_DIR": str(tmp_path / "var"),
        "INGEST_DRAIN_INTERVAL": "0.5", "BEAT_METRICS_PORT": str(port), "LOG_FORMAT": "json",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "beat.log"
    beat = subprocess.Popen(
        [str(BIN / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel=INFO", "-s", str(tmp_path / "schedule")],
        cwd=PROJECT_ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: value(scrape(url), "celery_beat_tasks_sent_total", task="ingest.drain_events") >= 3, 60, "beat to queue drains")
        samples = scrape(url)
        assert abs(value(samples, "celery_beat_last_sent_timestamp_seconds", task="ingest.drain_events") - time.time()) < 30
        queued = get_redis(broker).llen("celery")
        assert queued >= 3  # nothing consumes them here: what beat counted is in the queue
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=20)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(line["process"] == "beat" for line in lines)
    assert not list((tmp_path / "var" / "prometheus").glob("celery-*"))  # its private directory is gone

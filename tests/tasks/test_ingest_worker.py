"""End to end with a real Celery worker (and its embedded beat) as a subprocess: events accepted
by the API reach PostgreSQL on their own, and a worker killed with SIGKILL mid-stream loses nothing
and double-counts nothing once a new worker takes over."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import db
from core.config import PROJECT_ROOT, redis_url_with_db
from core.redis import get_redis
from services.ingestion import drain as ingestion_drain
from tests.support.ingestion import assign_users, count_rows, rollup_mismatches

SERVICE = "pay_module"


@pytest.fixture
def broker_url(settings):
    """``TEST_BROKER_URL`` lets parallel test runs keep their Celery queues apart."""
    url = os.environ.get("TEST_BROKER_URL") or redis_url_with_db(settings.redis_url, 14)
    get_redis(url).flushdb()
    return url


@pytest.fixture
def start_worker(settings, broker_url, tmp_path: Path):
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "CELERY_BROKER_URL": broker_url,
            "INGEST_DRAIN_INTERVAL": "0.5",
            "APP_ENV": "test",
        }
        log = open(tmp_path / f"{name}.log", "wb")
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "tasks.celery_app", "worker", "-B",
             "-s", str(tmp_path / f"{name}-beat-schedule"), "--concurrency=2", "--loglevel=INFO",
             "-n", f"{name}@%h"],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()  # warm shutdown of the main process; it stops its pool and beat
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything left of the group
        except ProcessLookupError:
            pass
        process.wait()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_hard(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_tasks_have_explicit_names_and_workers_send_events(settings):
    import celeryconfig
    from tasks.celery_app import create_celery

    celery = create_celery(settings)
    celery.loader.import_default_modules()
    assert {"ingest.drain_events", "ingest.prune_consumers"} <= set(celery.tasks)
    assert celery.conf.worker_send_task_events is True
    assert celery.conf.broker_url == settings.celery_broker_url
    assert "tasks.ingest" in celeryconfig.include
    assert celery.conf.beat_schedule["ingest.drain_events"]["task"] == "ingest.drain_events"


@pytest.mark.slow
def test_worker_drains_events_accepted_by_the_api(client, auth, create_experiment, settings, start_worker):
    experiment = create_experiment(start=True)
    assign_users(settings, experiment, [f"u{i}" for i in range(10)])
    start_worker("steady")
    for i in range(10):
        response = client.post(f"/api/experiments/{experiment['id']}/track",
                               json={"molam_id": f"u{i}", "event_type": "conversion", "value": i},
                               headers=auth(SERVICE))
        assert response.status_code == 202
    wait_for(lambda: count_rows(settings, "experiment_metrics") == 10, 30, "the worker to write 10 events")
    assert rollup_mismatches(settings) == []


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_and_counts_nothing_twice(client, auth, create_experiment, settings,
                                                                  start_worker):
    rng = random.Random(20_000)
    experiment = create_experiment(start=True)
    users = [f"user-{i}" for i in range(2000)]
    assign_users(settings, experiment, users)
    redis_client = get_redis(settings.redis_url)

    # 20,000 events in batches of 1,000; one in ten re-sends an earlier event id (a client retry).
    sent: list[str] = []
    batches: list[list[dict]] = []
    for b in range(20):
        events = []
        for i in range(1000):
            if sent and rng.random() < 0.1:
                event_id = rng.choice(sent)
            else:
                event_id = f"crash-{b}-{i}"
            sent.append(event_id)
            events.append({"experiment_id": experiment["id"], "event_id": event_id,
                           "molam_id": users[hash(event_id) % len(users)],
                           "event_type": ("conversion", "click", "view")[hash(event_id) % 3],
                           "value": (hash(event_id) % 10_000) / 100})
        batches.append(events)

    def post(events):
        response = client.post("/api/events/batch", json={"events": events}, headers=auth(SERVICE))
        assert response.status_code == 202 and not response.get_json()["rejected"]

    first = start_worker("first")
    for events in batches[:12]:
        post(events)
    wait_for(lambda: count_rows(settings, "experiment_metrics") > 0, 30, "the first worker to write")
    # Kill while a drain holds delivered, unacknowledged entries (it does for the ~0.3 s of each
    # batch's transaction): SIGKILL to the worker, its pool and its beat, no chance to acknowledge.
    wait_for(lambda: ingestion_drain.backlog(redis_client).pending > 0, 30, "a drain in flight")
    kill_hard(first)
    orphaned = ingestion_drain.backlog(redis_client).pending
    assert orphaned > 0, "the kill did not catch a drain mid-batch"
    written_by_first = count_rows(settings, "experiment_metrics")
    for events in batches[12:]:  # the API keeps accepting while no worker runs
        post(events)
    assert written_by_first < len(set(sent)), "the first worker finished everything before it was killed"

    start_worker("second")
    wait_for(lambda: ingestion_drain.backlog(redis_client).length == 0, 50, "the second worker to drain")
    assert ingestion_drain.backlog(redis_client).pending == 0  # the orphaned entries were claimed
    assert count_rows(settings, "experiment_metrics") == len(set(sent))
    assert count_rows(settings, "experiment_metric_dead_letters") == 0
    assert rollup_mismatches(settings) == []


def test_database_outage_backs_off_and_loses_nothing(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True)
    assign_users(settings, experiment, ["u1"])
    response = client.post(f"/api/experiments/{experiment['id']}/track",
                           json={"molam_id": "u1", "event_type": "conversion", "value": 9}, headers=auth(SERVICE))
    assert response.status_code == 202
    # This process as one worker (one stream consumer) whose PostgreSQL goes away and comes back.
    from tasks.celery_app import create_celery
    from tasks.ingest import BACKOFF_KEY, drain_events

    create_celery(settings)
    db.init_engine("postgresql+psycopg://postgres@127.0.0.1:1/unreachable")
    try:
        failed = drain_events()
        skipped = drain_events()
    finally:
        db.init_engine(settings.database_url)
    get_redis(settings.redis_url).delete(BACKOFF_KEY)  # PostgreSQL is back; skip the wait
    recovered = drain_events()
    assert failed["paused_s"] == 2 and "failed 4 times" in failed["error"]
    assert skipped == {"skipped": "backing off after database errors"}
    assert recovered["inserted"] == 1 and recovered["backlog"] is False
    redis_client = get_redis(settings.redis_url)
    assert ingestion_drain.backlog(redis_client).pending == 0
    assert redis_client.get("ingest:drain:failures") is None
    assert count_rows(settings, "experiment_metrics") == 1
    assert rollup_mismatches(settings) == []

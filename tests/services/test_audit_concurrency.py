"""The audit chain under concurrency: one lock order (experiment row, then the chain) for API
mutations and SIRA's automatic actions, and an unbroken chain after many writers at once."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from core.config import libpq_url
from core.redis import get_redis
from services.analysis import jobs as sira_jobs
from services.experiments.audit import _CHAIN_LOCK_KEY
from tests.support.sira_data import set_arm


def losing_experiment(create_experiment, settings, name):
    """Control converts at 10 %, the variant at 5 %: fail-fast pauses the variant."""
    experiment = create_experiment(start=True, name=name, guardrails=[], fail_fast={"action": "pause_variant"})
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=3000, successes=300)
    set_arm(settings.database_url, experiment["id"], green, assigned=3000, successes=150)
    return experiment


def _wait_for_chain_waiters(admin_url: str, count: int, timeout: float = 15.0) -> None:
    """Until ``count`` backends wait for the chain's advisory lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND ((classid::bigint << 32) | objid::bigint) = %s",
                (_CHAIN_LOCK_KEY,),
            ).fetchone()[0]
            if waiting >= count:
                return
            time.sleep(0.02)
    raise AssertionError(f"fewer than {count} writers waited for the audit chain lock")


def _assert_holds_the_experiment_row(admin_url: str, experiment_id: str) -> None:
    """FOR NO KEY UPDATE conflicts with the writer's FOR UPDATE, not with a foreign key's KEY SHARE."""
    with psycopg.connect(libpq_url(admin_url)) as conn:
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("SELECT id FROM experiments WHERE id = %s FOR NO KEY UPDATE NOWAIT", (experiment_id,))


def _chain_facts(admin_url: str) -> tuple[int, int]:
    with psycopg.connect(libpq_url(admin_url)) as conn:
        return conn.execute("SELECT count(*), count(DISTINCT prev_hash) FROM experiment_audit_logs").fetchone()


def test_the_chain_lock_is_the_last_lock_a_writer_takes(settings, migrated_database, app, auth, create_experiment):
    """SIRA used to take the chain lock and then lock the experiment row, while API mutations
    lock the row and then the chain: a deadlock, answered as a 503. Now every writer (SIRA's
    action, an API mutation) reaches the chain lock already holding the experiment row, with
    its changes made; holding the chain lock here stops each one exactly at that point."""
    experiment = losing_experiment(create_experiment, settings, "contended")
    edited = create_experiment(start=True, name="edited")
    redis_client = get_redis(settings.redis_url)
    outcome: dict = {}

    def api_edit() -> None:
        with app.test_client() as c:
            outcome["status"] = c.patch(
                f"/api/experiments/{edited['id']}", json={"description": "edited"}, headers=auth("marketing")
            ).status_code

    with psycopg.connect(libpq_url(migrated_database), autocommit=True) as chain_holder:
        chain_holder.execute("SELECT pg_advisory_lock(%s)", (_CHAIN_LOCK_KEY,))
        try:
            sira = threading.Thread(target=lambda: outcome.update(scan=sira_jobs.fail_fast_scan(redis_client)))
            sira.start()
            _wait_for_chain_waiters(migrated_database, 1)
            _assert_holds_the_experiment_row(migrated_database, experiment["id"])
            api = threading.Thread(target=api_edit)
            api.start()
            _wait_for_chain_waiters(migrated_database, 2)
            _assert_holds_the_experiment_row(migrated_database, edited["id"])
        finally:
            chain_holder.execute("SELECT pg_advisory_unlock(%s)", (_CHAIN_LOCK_KEY,))
    sira.join(timeout=30)
    api.join(timeout=30)
    assert outcome["status"] == 200
    scan = outcome["scan"]
    assert scan.errors == [] and scan.recommendations == 1 and scan.actions_applied == 1
    with app.test_client() as c:
        assert c.get("/api/audit/verify", headers=auth()).get_json()["ok"] is True


def test_api_mutations_and_sira_actions_leave_one_unbroken_chain(
    settings, migrated_database, app, auth, create_experiment
):
    """50 API mutations from 8 threads, and two SIRA scans acting on the same experiments."""
    experiments = [losing_experiment(create_experiment, settings, f"concurrent {n}") for n in range(5)]
    before, _ = _chain_facts(migrated_database)  # a create and a start per experiment
    assert before == 10
    redis_client = get_redis(settings.redis_url)
    start = threading.Barrier(10)

    def mutate(n: int) -> int:
        experiment = experiments[n % len(experiments)]
        if n < 8:
            start.wait()
        with app.test_client() as c:
            response = c.patch(
                f"/api/experiments/{experiment['id']}", json={"description": f"edit {n}"}, headers=auth("marketing")
            )
        return response.status_code

    def scan() -> sira_jobs.ScanSummary:
        start.wait()
        return sira_jobs.fail_fast_scan(redis_client)

    with ThreadPoolExecutor(10) as pool:
        scans = [pool.submit(scan) for _ in range(2)]
        statuses = list(pool.map(mutate, range(50)))
        summaries = [s.result() for s in scans]
    assert statuses == [200] * 50
    assert [s.errors for s in summaries] == [[], []]
    assert sum(s.recommendations for s in summaries) == 5 and sum(s.actions_applied for s in summaries) == 5

    expected = before + 50 + 5 * 2  # every edit; per experiment a sira_fail_fast entry and its pause_variant
    entries, distinct_prev = _chain_facts(migrated_database)
    assert entries == expected and distinct_prev == expected
    with app.test_client() as c:
        verify = c.get("/api/audit/verify", headers=auth()).get_json()
    assert verify["ok"] is True and verify["entries"] == expected and verify["first_bad_id"] is None

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


def _wait_for_lock_waiter(admin_url: str, timeout: float = 10.0) -> None:
    """Until some backend of the test database waits for a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE NOT l.granted AND a.datname = current_database()"
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("nobody waited for the experiment row")


def _chain_facts(admin_url: str) -> tuple[int, int]:
    with psycopg.connect(libpq_url(admin_url)) as conn:
        return conn.execute("SELECT count(*), count(DISTINCT prev_hash) FROM experiment_audit_logs").fetchone()


def test_a_sira_action_waits_for_the_row_without_holding_the_chain(
    settings, migrated_database, app, client, auth, create_experiment
):
    """An API mutation holds the experiment row and then needs the chain lock, while SIRA acts on
    the same experiment. SIRA used to take the chain lock first and then wait for the row: a
    deadlock, answered as a 503. Now SIRA waits for the row holding nothing the API needs."""
    experiment = losing_experiment(create_experiment, settings, "contended")
    redis_client = get_redis(settings.redis_url)
    scan: dict = {}

    with psycopg.connect(libpq_url(settings.database_url)) as api_transaction:
        api_transaction.execute("SET lock_timeout = '5s'")
        api_transaction.execute("SELECT id FROM experiments WHERE id = %s FOR UPDATE", (experiment["id"],))
        sira = threading.Thread(target=lambda: scan.update(summary=sira_jobs.fail_fast_scan(redis_client)))
        sira.start()
        _wait_for_lock_waiter(migrated_database)
        # The API's next step: the chain lock. It must be free (no deadlock, no lock timeout).
        api_transaction.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK_KEY,))
        api_transaction.commit()
    sira.join(timeout=30)
    assert not sira.is_alive()
    summary = scan["summary"]
    assert summary.errors == [] and summary.recommendations == 1 and summary.actions_applied == 1
    verify = client.get("/api/audit/verify", headers=auth()).get_json()
    assert verify["ok"] is True


@pytest.mark.slow
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

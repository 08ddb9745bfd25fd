"""End to end through the API, a real Celery worker and its beat: an A/A bandit whose base
rate rises over six waves raises no fail-fast flag.

Users are assigned with ``POST /assign`` (the bandit draws from the weights SIRA
publishes, and every row records its allocation period and probability), their
conversions go through ``POST /events/batch`` and the worker's drain, and the beat runs
``sira.recompute_posteriors`` and ``sira.fail_fast_scan`` on its own every half second.
Both arms convert at the same rate within each wave, a rate that rises from 2% to 22%:
pooling the counts over the run would credit whichever arm the bandit happened to
favour in the later, better waves.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from core.config import libpq_url as plain_url
from sira.failfast import FailFastConfig, sequential_flags
from sira.stats import ProportionStats
from sira.strata import PeriodTable
from tests.support.worker import running_worker

SERVICE = "pay_module"
WAVES = [0.02, 0.06, 0.10, 0.14, 0.18, 0.22]
USERS_PER_WAVE = 600


@pytest.fixture
def sira_worker(settings, tmp_path: Path):
    """A worker with its embedded beat running SIRA's jobs every half second."""
    with running_worker(settings, tmp_path, "drift", {"INGEST_DRAIN_INTERVAL": "0.5", "SIRA_RECOMPUTE_INTERVAL": "0.5", "SIRA_FAIL_FAST_INTERVAL": "0.5"}, concurrency=2) as process:
        yield process


def _scalar(settings, query, *params):
    with psycopg.connect(plain_url(settings.database_url)) as conn:
        return conn.execute(query, params).fetchone()[0]


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_aa_bandit_with_a_rising_base_rate_raises_no_fail_fast_flag(client, auth, create_experiment, settings, sira_worker):
    rng = random.Random(9)
    experiment = create_experiment(
        start=True,
        mode="bandit",
        targeting={},
        guardrails=[],
        fail_fast={"action": "pause_variant"},
        bandit={"min_samples": 100, "floor": 0.01},
        attribution_window_s={"conversion": 1},  # a one-second window: waves mature between looks
    )
    experiment_id = experiment["id"]
    headers = auth(SERVICE, sub="pay-svc")
    tracked = 0
    for wave, rate in enumerate(WAVES):
        events = []
        for n in range(USERS_PER_WAVE):
            molam_id = f"w{wave}-{n}"
            response = client.post(f"/api/experiments/{experiment_id}/assign", json={"molam_id": molam_id}, headers=headers)
            assert response.status_code == 200 and response.get_json()["eligible"], response.get_json()
            if rng.random() < rate:
                events.append({"experiment_id": experiment_id, "molam_id": molam_id, "event_type": "conversion"})
        if events:
            accepted = client.post("/api/events/batch", json={"events": events}, headers=headers)
            assert accepted.status_code == 202 and not accepted.get_json()["rejected"], accepted.get_json()
        tracked += len(events)
        _wait_for(
            lambda tracked=tracked: _scalar(
                settings, "SELECT count(*) FROM experiment_metrics WHERE experiment_id = %s", experiment_id
            ) == tracked,
            60, f"the worker to write wave {wave}'s events",
        )
        wave_done = time.time()
        time.sleep(1.2)  # the wave matures
        # a recompute and a fail-fast scan after the wave matured
        _wait_for(
            lambda wave_done=wave_done: _scalar(
                settings,
                "SELECT coalesce(extract(epoch FROM max(computed_at)), 0) FROM experiment_bandit_state WHERE experiment_id = %s",
                experiment_id,
            ) > wave_done + 1.0,
            60, "SIRA to recompute the posteriors",
        )
        time.sleep(1.5)  # at least one more fail-fast scan

    insights = client.get(f"/api/experiments/{experiment_id}/insights", headers=auth("data_science")).get_json()
    assert insights["fail_fast"]["flags"] == [] and insights["fail_fast"]["recommendations"] == []
    assert _scalar(settings, "SELECT count(*) FROM sira_recommendations WHERE experiment_id = %s", experiment_id) == 0
    assert _scalar(settings, "SELECT count(*) FROM experiment_variants WHERE experiment_id = %s AND paused", experiment_id) == 0

    results = client.get(f"/api/experiments/{experiment_id}/results", headers=auth("data_science")).get_json()
    assert results["periods"] > 1  # the bandit did move its weights
    assert results["srm"]["flagged"] is False
    assert sum(v["metrics"]["conversion"]["matured_users"] for v in results["variants"]) == len(WAVES) * USERS_PER_WAVE

    # The same counts per (period, arm), judged by the pooled rule of before, for the record.
    with psycopg.connect(plain_url(settings.database_url)) as conn:
        rows = conn.execute(
            """
            SELECT a.period, v.position, count(*), count(u.molam_id)
            FROM experiment_assignments a JOIN experiment_variants v ON v.id = a.variant_id
            LEFT JOIN experiment_user_rollups u
                   ON u.experiment_id = a.experiment_id AND u.molam_id = a.molam_id AND u.event_type = 'conversion'
            WHERE a.experiment_id = %s GROUP BY 1, 2 ORDER BY 1, 2
            """,
            (experiment_id,),
        ).fetchall()
    periods = sorted({r[0] for r in rows})
    users = np.zeros((len(periods), 2))
    wins = np.zeros((len(periods), 2))
    for period, position, n, s in rows:
        users[periods.index(period), position] = n
        wins[periods.index(period), position] = s
    table = PeriodTable(users, wins)
    assert sequential_flags(table, FailFastConfig()) == []
    pooled_flags = sequential_flags([ProportionStats(int(u), int(s)) for u, s in zip(users.sum(0), wins.sum(0))], FailFastConfig())
    print(f"periods: {len(periods)}; users per arm {users.sum(0)}; pooled rule would flag: {bool(pooled_flags)}")

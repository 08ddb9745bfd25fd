"""SIRA's Celery tasks, run through Celery's task machinery (in-process) on real
PostgreSQL and Redis; beat schedule wiring."""
from __future__ import annotations

import json
import threading

import psycopg
import pytest
from celery.schedules import crontab

from core.config import libpq_url
from core.redis import get_redis
from services.analysis import jobs as sira_jobs
from tests.support.sira_data import NO_WINDOWS, set_arm


@pytest.fixture
def sira_tasks(app, settings):
    """tasks.sira run by a Celery app built for the test database and Redis."""
    import tasks.sira
    from tasks.celery_app import create_celery

    create_celery(settings)
    return tasks.sira


def count(settings, query):
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        return conn.execute(query).fetchone()[0]


def losing_bandit(create_experiment, settings, **overrides):
    experiment = create_experiment(start=True, mode="bandit", guardrails=[], **{"attribution_window_s": NO_WINDOWS, **overrides})
    control, green = (v["id"] for v in experiment["variants"])
    set_arm(settings.database_url, experiment["id"], control, assigned=3000, successes=300)
    set_arm(settings.database_url, experiment["id"], green, assigned=3000, successes=150)
    return experiment


def test_tasks_are_registered_under_their_names(sira_tasks, settings):
    from tasks.celery_app import create_celery

    celery = create_celery(settings)
    celery.loader.import_default_modules()
    assert {"sira.recompute_posteriors", "sira.fail_fast_scan", "sira.daily_report"} <= set(celery.tasks)


def test_recompute_task_writes_state_and_publishes(sira_tasks, create_experiment, settings):
    experiment = losing_bandit(create_experiment, settings)
    result = sira_tasks.recompute_posteriors.apply().get()
    assert result["experiments"] == 1 and result["published"] == 1 and result["errors"] == []
    published = json.loads(get_redis(settings.redis_url).get(f"sira:weights:{experiment['id']}"))
    control, green = (v["id"] for v in experiment["variants"])
    assert published["weights"][control] > 0.98 and published["weights"][green] == pytest.approx(0.01, abs=1e-9)
    assert count(settings, "SELECT count(*) FROM experiment_bandit_state") == 2
    assert count(settings, "SELECT count(*) FROM experiment_bandit_history") == 2
    sira_tasks.recompute_posteriors.apply().get()
    assert count(settings, "SELECT count(*) FROM experiment_bandit_history") == 2


def test_fail_fast_task_twice_records_once(sira_tasks, create_experiment, settings):
    losing_bandit(create_experiment, settings)
    first = sira_tasks.fail_fast_scan.apply().get()
    second = sira_tasks.fail_fast_scan.apply().get()
    assert first["recommendations"] == 1 and second["recommendations"] == 0
    assert count(settings, "SELECT count(*) FROM sira_recommendations") == 1
    assert count(settings, "SELECT count(*) FROM experiment_audit_logs WHERE actor = 'sira'") == 1


@pytest.mark.slow
def test_concurrent_task_runs_are_safe(sira_tasks, create_experiment, settings):
    losing_bandit(create_experiment, settings)
    barrier = threading.Barrier(3)
    outcomes = []

    def run(task):
        barrier.wait()
        outcomes.append(task.apply().get())

    threads = [threading.Thread(target=run, args=(t,)) for t in
               (sira_tasks.fail_fast_scan, sira_tasks.fail_fast_scan, sira_tasks.recompute_posteriors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 3
    assert count(settings, "SELECT count(*) FROM sira_recommendations") == 1
    assert count(settings, "SELECT count(*) FROM experiment_audit_logs WHERE actor = 'sira'") == 1
    assert count(settings, "SELECT count(*) FROM experiment_bandit_state") == 2


def test_a_held_lock_skips_the_run(sira_tasks, create_experiment, settings):
    losing_bandit(create_experiment, settings)
    with sira_jobs.job_lock("sira.fail_fast_scan") as held:
        assert held
        assert sira_tasks.fail_fast_scan.apply().get() == {"skipped": "another run holds the lock"}
    assert count(settings, "SELECT count(*) FROM sira_recommendations") == 0
    assert sira_tasks.fail_fast_scan.apply().get()["recommendations"] == 1


def test_daily_report_task_once_per_day(sira_tasks, create_experiment, settings):
    create_experiment(start=True)
    first = sira_tasks.daily_report.apply(kwargs={"report_date": "2026-05-01"}).get()
    second = sira_tasks.daily_report.apply(kwargs={"report_date": "2026-05-01"}).get()
    assert first == {"report_date": "2026-05-01", "experiments": 1, "created": 1, "errors": []}
    assert second["created"] == 0
    assert sira_tasks.daily_report.apply().get()["created"] == 1  # today
    assert count(settings, "SELECT count(*) FROM sira_reports") == 2


def test_daily_report_of_an_empty_experiment(sira_tasks, create_experiment, settings):
    experiment = create_experiment(start=True, mode="bandit", attribution_window_s=NO_WINDOWS)
    assert sira_tasks.daily_report.apply(kwargs={"report_date": "2026-05-02"}).get()["created"] == 1
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        content, markdown = conn.execute("SELECT content, markdown FROM sira_reports").fetchone()
    assert content["experiment"]["id"] == experiment["id"]
    assert content["recommendation"].startswith("Not enough data yet")
    assert "| Control (Blue) | 0 |" in markdown


def test_beat_schedule_follows_settings(monkeypatch):
    import celeryconfig
    from core.config import load_settings
    from tasks.celery_app import create_celery

    monkeypatch.setenv("SIRA_RECOMPUTE_INTERVAL", "5")
    monkeypatch.setenv("SIRA_FAIL_FAST_INTERVAL", "7.5")
    monkeypatch.setenv("SIRA_DAILY_REPORT_HOUR", "4")
    monkeypatch.setenv("SIRA_DAILY_REPORT_MINUTE", "30")
    schedule = create_celery(load_settings()).conf.beat_schedule
    assert "tasks.sira" in celeryconfig.include
    assert schedule["sira.recompute_posteriors"]["task"] == "sira.recompute_posteriors"
    assert schedule["sira.recompute_posteriors"]["schedule"] == 5.0
    assert schedule["sira.fail_fast_scan"]["schedule"] == 7.5
    assert schedule["sira.daily_report"]["schedule"] == crontab(hour=4, minute=30)
    for name in ("SIRA_RECOMPUTE_INTERVAL", "SIRA_FAIL_FAST_INTERVAL", "SIRA_DAILY_REPORT_HOUR", "SIRA_DAILY_REPORT_MINUTE"):
        monkeypatch.delenv(name)
    defaults = celeryconfig.beat_schedule(load_settings())
    assert defaults["sira.recompute_posteriors"]["schedule"] == 30.0
    assert defaults["sira.fail_fast_scan"]["schedule"] == 60.0
    assert defaults["sira.daily_report"]["schedule"] == crontab(hour=6, minute=0)

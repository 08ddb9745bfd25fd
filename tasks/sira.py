"""SIRA's beat jobs. Thin: take the job's lock, hand off to :mod:`services.analysis.jobs`.

Each returns a small summary (visible in Flower) or ``{"skipped": ...}`` when another
run of the same job holds its lock; the next beat tick simply tries again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from celery import shared_task

from core import metrics
from core.redis import get_redis
from services.analysis import jobs as sira_jobs
from services.analysis import reports as sira_reports
from services.analysis import scan as sira_scan

from .celery_app import current_settings

log = logging.getLogger(__name__)


def _exclusive(job: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    with sira_jobs.job_lock(job) as acquired:
        if not acquired:
            log.info("%s: another run holds the lock; skipping", job)
            metrics.SIRA_JOB_RUNS.labels(job=job, outcome="skipped").inc()
            return {"skipped": "another run holds the lock"}
        with metrics.SIRA_JOB_SECONDS.labels(job=job).time():
            try:
                summary = work()
            except Exception:
                metrics.SIRA_JOB_RUNS.labels(job=job, outcome="failed").inc()
                metrics.SIRA_JOB_ERRORS.labels(job=job).inc()
                raise
        metrics.SIRA_JOB_RUNS.labels(job=job, outcome="ok").inc()
        if summary.get("errors"):
            metrics.SIRA_JOB_ERRORS.labels(job=job).inc(len(summary["errors"]))
        return summary


@shared_task(name="sira.recompute_posteriors")
def recompute_posteriors() -> dict[str, Any]:
    """Posteriors, P(best) and weights of every running experiment; publish the weights."""
    settings = current_settings()
    return _exclusive(
        "sira.recompute_posteriors",
        lambda: sira_jobs.recompute_posteriors(
            get_redis(settings.redis_url), recompute_interval_s=settings.recompute_interval_s
        ).as_dict(),
    )


@shared_task(name="sira.fail_fast_scan")
def fail_fast_scan() -> dict[str, Any]:
    """Fail-fast and guardrail rules on every running experiment; record and act once."""
    settings = current_settings()
    return _exclusive(
        "sira.fail_fast_scan",
        lambda: sira_scan.fail_fast_scan(get_redis(settings.redis_url)).as_dict(),
    )


@shared_task(name="sira.daily_report")
def daily_report(report_date: str | None = None) -> dict[str, Any]:
    """Store today's report (UTC) for every running experiment; existing ones are kept."""
    settings = current_settings()
    day = datetime.fromisoformat(report_date).date() if report_date else datetime.now(timezone.utc).date()
    return _exclusive(
        "sira.daily_report",
        lambda: sira_reports.daily_reports(get_redis(settings.redis_url), report_date=day).as_dict(),
    )

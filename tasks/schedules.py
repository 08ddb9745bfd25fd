"""Scheduled starts and stops of experiments (beat ticks it; see services.experiments.schedules)."""
from __future__ import annotations

from typing import Any

from celery import shared_task

from core.redis import get_redis
from services.analysis import jobs
from services.experiments import schedules

from .celery_app import current_settings

JOB = "experiments.run_schedules"


@shared_task(name=JOB)
def run_schedules() -> dict[str, Any]:
    """Start drafts whose start_at has passed and stop running experiments whose end_at has."""
    settings = current_settings()
    with jobs.job_lock(JOB) as acquired:
        if not acquired:
            return {"skipped": "another run holds the lock"}
        return schedules.run_due(
            get_redis(settings.redis_url),
            approvals_required=settings.approvals_required,
            retry_interval_s=settings.schedule_retry_interval_s,
        ).as_dict()

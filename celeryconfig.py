"""Celery settings: the fixed ones as lower-case module attributes (``config_from_object``),
and those that follow :class:`core.config.Settings` built by :func:`from_settings`."""
from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from core.config import Settings

result_backend = None
task_ignore_result = True
include: list[str] = ["tasks.sira", "tasks.ingest", "tasks.schedules", "tasks.audit"]

# Losing a message loses data: acknowledge only after the task finished, and put
# the message back if the worker process dies mid-task.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_transport_options = {"visibility_timeout": 300}
broker_connection_retry_on_startup = True

# Flower watches task events.
worker_send_task_events = True
task_send_sent_event = True

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True


def from_settings(settings: Settings) -> dict[str, Any]:
    """The broker and the beat schedule for these settings."""
    return {"broker_url": settings.celery_broker_url, "beat_schedule": beat_schedule(settings)}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        # Ingestion: a drain every tick; a run that hits its budget queues its own successor.
        "ingest.drain_events": {
            "task": "ingest.drain_events",
            "schedule": settings.ingest_drain_interval_s,
            "options": {"expires": 10 * settings.ingest_drain_interval_s},
        },
        "ingest.prune_consumers": {"task": "ingest.prune_consumers", "schedule": 3600.0},
        # SIRA: a tick that could not run before the next one is due is dropped, not queued.
        "sira.recompute_posteriors": {
            "task": "sira.recompute_posteriors",
            "schedule": settings.recompute_interval_s,
            "options": {"expires": settings.recompute_interval_s},
        },
        "sira.fail_fast_scan": {
            "task": "sira.fail_fast_scan",
            "schedule": settings.fail_fast_interval_s,
            "options": {"expires": settings.fail_fast_interval_s},
        },
        # Scheduled starts and stops: a tick every SCHEDULE_INTERVAL (15 s) keeps them within 60 s.
        "experiments.run_schedules": {
            "task": "experiments.run_schedules",
            "schedule": settings.schedule_interval_s,
            "options": {"expires": settings.schedule_interval_s},
        },
        # Audit: sign the chain head every AUDIT_CHECKPOINT_INTERVAL (5 min); a missed tick is dropped.
        "audit.write_checkpoint": {
            "task": "audit.write_checkpoint",
            "schedule": settings.audit_checkpoint_interval_s,
            "options": {"expires": settings.audit_checkpoint_interval_s},
        },
        "sira.daily_report": {
            "task": "sira.daily_report",
            "schedule": crontab(hour=settings.daily_report_hour, minute=settings.daily_report_minute),
        },
    }

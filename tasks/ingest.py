"""Ingestion drain: beat ticks it every second; a run that hits its budget re-queues itself.

The stream is the durable queue, not the task message: a drain message lost or run
twice changes nothing (entries are acknowledged after their commit, and drains share
the work through the consumer group). So the task acknowledges its message on
receipt (``acks_late=False``), and its successor is queued at most once at a time.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from core.redis import get_redis
from services.cache import DRAIN_BACKOFF_KEY as BACKOFF_KEY
from services.cache import DRAIN_FAILURES_KEY as FAILURES_KEY
from services.cache import DRAIN_SUCCESSOR_FLAG as SUCCESSOR_FLAG
from services.ingestion import drain as ingestion_drain

from .celery_app import current_settings

log = logging.getLogger(__name__)

#: Seconds one run may drain before it yields its worker process (and re-queues itself).
DRAIN_BUDGET_S = 2.0
MAX_BACKOFF_S = 60


@shared_task(name="ingest.drain_events", acks_late=False, ignore_result=True)
def drain_events() -> dict[str, Any]:
    """Write staged events to PostgreSQL; returns what it did (visible in Flower)."""
    client = get_redis(current_settings().redis_url)
    client.delete(SUCCESSOR_FLAG)
    if client.exists(BACKOFF_KEY):
        return {"skipped": "backing off after database errors"}
    try:
        report = ingestion_drain.drain(client, budget_s=DRAIN_BUDGET_S)
    except ingestion_drain.DatabaseUnavailable as exc:
        # Each run already retried with backoff; the batch stays pending under this
        # consumer (or, after CLAIM_IDLE_MS, any other one) and later runs write it.
        failures = client.incr(FAILURES_KEY)
        client.expire(FAILURES_KEY, 10 * MAX_BACKOFF_S)
        pause_s = min(2**failures, MAX_BACKOFF_S)
        client.set(BACKOFF_KEY, "1", ex=pause_s)
        log.warning("ingestion paused for %d s after %d failed runs: %s", pause_s, failures, exc)
        return {"error": str(exc), "paused_s": pause_s}
    client.delete(FAILURES_KEY)
    if report.backlog and client.set(SUCCESSOR_FLAG, "1", nx=True, ex=30):
        drain_events.apply_async()
    summary = report.as_dict()
    if report.entries:
        log.info("drained %s", summary)
    return summary


@shared_task(name="ingest.prune_consumers", ignore_result=True)
def prune_consumers() -> dict[str, int]:
    """Forget stream consumers left by worker processes that are gone (nothing pending)."""
    return {"removed": ingestion_drain.prune_consumers(get_redis(current_settings().redis_url))}

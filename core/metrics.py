"""Prometheus metrics, declared in one place.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` must be set before this module is
imported so every worker process writes its samples where ``/metrics`` reads them.
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram

EXPERIMENT_ASSIGNMENTS = Counter(
    "experiment_assignments_total", "New assignments of users to variants", ["experiment_id"]
)
EXPERIMENT_METRICS = Counter(
    "experiment_metrics_total", "Tracked events accepted for ingestion", ["experiment_id", "event_type"]
)
SIRA_DECISION_LATENCY = Histogram(
    "sira_decisions_latency_seconds",
    "Time to decide a user's variant (eligibility, split or bandit draw, persistence)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

"""Prometheus metrics, declared in one place.

Every process counts into these: the API (gunicorn workers), the Celery worker's
pool processes and beat. With ``PROMETHEUS_MULTIPROC_DIR`` set before this module is
imported, each process writes its samples to files there and one exporter per
service sums them: the API's ``/metrics`` (``api.observability``) and the Celery
processes' own port (``tasks.metrics``). The README's Operations section says what
each metric and alert means.

Gauges that describe the database (experiments by status, SIRA's per-arm state,
funnels) are not declared here: they are read at scrape time by the collectors in
:mod:`api.observability`, so a finished experiment's label sets disappear with it.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# --------------------------------------------------------------------------- API

EXPERIMENT_ASSIGNMENTS = Counter(
    "experiment_assignments_total", "New assignments of users to variants", ["experiment_id"]
)
EXPERIMENT_METRICS_ACCEPTED = Counter(
    "experiment_metrics_accepted_total",
    "Tracked events accepted by the API and queued for ingestion (a resent event_id counts again)",
    ["experiment_id", "event_type"],
)
SIRA_DECISION_LATENCY = Histogram(
    "sira_decisions_latency_seconds",
    "Time to decide a user's variant (eligibility, split or bandit draw, persistence)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# --------------------------------------------------------------------------- ingestion (worker)

EXPERIMENT_METRICS = Counter(
    "experiment_metrics_total",
    "Tracked events persisted to PostgreSQL (duplicates and dead letters excluded)",
    ["experiment_id", "event_type"],
)
INGEST_DRAINED = Counter("ingest_events_drained_total", "Events read from the stream and processed by a drain")
INGEST_INSERTED = Counter("ingest_events_inserted_total", "Events written to PostgreSQL")
INGEST_DUPLICATES = Counter(
    "ingest_events_duplicates_total", "Events skipped because their event_id was already stored"
)
INGEST_DEAD_LETTERS = Counter(
    "ingest_dead_letters_total", "Events written to the dead-letter table instead of the metrics"
)
INGEST_DRAIN_FAILURES = Counter(
    "ingest_drain_failures_total", "Drain batches that failed because PostgreSQL kept failing (the batch stays queued)"
)
INGEST_BATCH_SECONDS = Histogram(
    "ingest_drain_batch_seconds",
    "Time to write one drained batch (decode, transaction, acknowledgement)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# --------------------------------------------------------------------------- SIRA jobs (worker)

SIRA_JOB_SECONDS = Histogram(
    "sira_job_duration_seconds",
    "Duration of a SIRA job run that held its lock",
    ["job"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
SIRA_JOB_RUNS = Counter(
    "sira_job_runs_total", "SIRA job runs by outcome (ok, skipped, failed)", ["job", "outcome"]
)
SIRA_JOB_ERRORS = Counter(
    "sira_job_errors_total",
    "Errors inside SIRA job runs (a failed run, or one experiment the run had to skip)",
    ["job"],
)
SIRA_RECOMMENDATIONS = Counter(
    "sira_recommendations_total", "Fail-fast and guardrail findings recorded", ["kind"]
)
SIRA_VARIANTS_AUTO_PAUSED = Counter(
    "sira_variants_auto_paused_total", "Variants paused by SIRA's fail-fast or guardrail actions"
)
SIRA_EXPERIMENTS_AUTO_STOPPED = Counter(
    "sira_experiments_auto_stopped_total", "Experiments stopped by SIRA's fail-fast or guardrail actions"
)

# --------------------------------------------------------------------------- beat

BEAT_TASKS_SENT = Counter("celery_beat_tasks_sent_total", "Tasks queued by beat", ["task"])
BEAT_LAST_SENT = Gauge(
    "celery_beat_last_sent_timestamp_seconds",
    "Unix time beat last queued each task",
    ["task"],
    multiprocess_mode="max",
)

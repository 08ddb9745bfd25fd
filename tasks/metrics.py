"""Prometheus for the Celery processes: the worker and beat each serve their own ``/metrics``.

A prefork worker runs its tasks in pool processes, which come and go; each counts
into files under one multiprocess directory, and the worker's main process serves
their sum on ``WORKER_METRICS_PORT`` (a pool process replaced after a crash keeps its
counts: prometheus_client sums the files of dead processes too). The same endpoint
adds the ingestion stream's backlog, pending entries and the age of its oldest entry,
read from Redis at scrape time, so several workers report the same truth. A
standalone beat serves what it queued on ``BEAT_METRICS_PORT``; an embedded beat
(``worker -B``) is a child of the worker and is exported with it.

The directory is ``PROMETHEUS_MULTIPROC_DIR`` when set (docker-compose gives each
container its own). Otherwise each worker or beat makes a private one under
``var/prometheus/`` just before its task modules import prometheus_client (Celery's
``import_modules`` signal) and removes it when it exits.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from celery.signals import after_task_publish, beat_init, import_modules, worker_init

from core.config import VAR_DIR, load_settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Set (and inherited by forked children) once a process of this service serves metrics.
EXPORTER_ENV = "MOLAM_METRICS_EXPORTER_PID"
PRIVATE_ROOT = VAR_DIR / "prometheus"

_in_beat = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_private_dir(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # forked children inherit atexit handlers; only the creator cleans up
        shutil.rmtree(path, ignore_errors=True)


def prepare_multiprocess_dir() -> Path | None:
    """Make sure this process tree counts into one multiprocess directory; returns it.

    Must run before :mod:`core.metrics` declares the metrics (each takes its value
    class, in-process or file-backed, when it is created).
    """
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        if "core.metrics" not in sys.modules:
            # A restarted container keeps its /tmp: start from zero, as a new process should.
            for stale in directory.glob("*.db"):
                if not stale.name.endswith(f"_{os.getpid()}.db"):
                    stale.unlink(missing_ok=True)
        return directory
    if "core.metrics" in sys.modules:
        log.warning(
            "the metrics were declared before %s could be set: pool processes' metrics will be missing",
            MULTIPROC_ENV,
        )
        return None
    PRIVATE_ROOT.mkdir(parents=True, exist_ok=True)
    for old in PRIVATE_ROOT.glob("celery-*"):
        try:
            pid = int(old.name.split("-", 1)[1])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    directory = PRIVATE_ROOT / f"celery-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    os.environ[MULTIPROC_ENV] = str(directory)
    if "prometheus_client" in sys.modules:
        # The celery CLI loads its plugins first, and Flower's imports prometheus_client:
        # choose the value class again so the metrics declared from now on are file-backed.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    atexit.register(_remove_private_dir, directory, os.getpid())
    return directory


def exporter_registry(*, with_stream: bool):
    """The registry a Celery service serves: its processes' samples, plus the stream state."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    if with_stream:
        registry.register(StreamCollector(load_settings().redis_url))
    return registry


class StreamCollector:
    """``ingest_stream_*`` gauges, read from Redis when scraped."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def describe(self):  # nothing to declare ahead: keeps registration free of I/O
        return []

    def collect(self):
        from prometheus_client.metrics_core import GaugeMetricFamily

        from core.redis import get_redis
        from services.ingestion import drain

        up = GaugeMetricFamily("ingest_stream_up", "1 when the worker could read the ingestion stream's state")
        try:
            state = drain.backlog(get_redis(self.redis_url))
        except Exception as exc:  # a scrape must not fail because Redis is down
            log.warning("ingestion stream state unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, documentation, value in (
            ("ingest_stream_backlog_entries", "Stream entries not yet written to PostgreSQL (up to 100 events each)", state.length),
            ("ingest_stream_pending_entries", "Entries delivered to a drain and not yet acknowledged", state.pending),
            ("ingest_stream_lag_entries", "Entries not yet delivered to any drain", state.lag or 0),
            ("ingest_stream_consumers", "Drain consumers registered on the stream's group", state.consumers),
            ("ingest_stream_oldest_entry_age_seconds", "Age of the oldest unwritten entry (0 when empty)", state.oldest_age_s()),
        ):
            family = GaugeMetricFamily(name, documentation)
            family.add_metric([], value)
            yield family


def start_exporter(port: int, *, with_stream: bool) -> bool:
    """Serve the registry on ``port`` from a daemon thread; False (logged) if it cannot."""
    if port <= 0:
        return False
    from prometheus_client import start_http_server

    settings = load_settings()
    try:
        start_http_server(port, addr=settings.metrics_host, registry=exporter_registry(with_stream=with_stream))
    except OSError as exc:
        log.warning("metrics exporter not started on %s:%d: %s", settings.metrics_host, port, exc)
        return False
    os.environ[EXPORTER_ENV] = str(os.getpid())
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return True


@import_modules.connect
def _before_task_modules(**_: object) -> None:
    prepare_multiprocess_dir()


@worker_init.connect
def _serve_worker_metrics(**_: object) -> None:
    start_exporter(load_settings().worker_metrics_port, with_stream=True)


@beat_init.connect
def _serve_beat_metrics(**_: object) -> None:
    global _in_beat
    _in_beat = True
    if os.environ.get(EXPORTER_ENV):  # embedded in a worker, which already exports this process tree
        return
    start_exporter(load_settings().beat_metrics_port, with_stream=False)


@after_task_publish.connect
def _count_beat_publish(sender: str | None = None, **_: object) -> None:
    if not _in_beat or not sender:
        return
    from core import metrics

    metrics.BEAT_TASKS_SENT.labels(task=sender).inc()
    metrics.BEAT_LAST_SENT.labels(task=sender).set(time.time())

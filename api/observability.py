"""Prometheus exposition on ``/metrics`` (prometheus-flask-exporter).

Under gunicorn every worker is a separate process: with ``PROMETHEUS_MULTIPROC_DIR``
set (``gunicorn.conf.py`` sets it before any worker starts) prometheus_client writes
samples to per-process files there and ``/metrics`` aggregates them on each scrape,
whichever worker answers. Without it (tests, ``flask run``) the process registry
is exported as is.
"""
from __future__ import annotations

import logging

from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics
from sqlalchemy import func, select

import core.metrics  # noqa: F401 - declare the domain metrics before the first scrape
from core import db
from models import Experiment
from models.enums import STATUSES

log = logging.getLogger(__name__)


class ExperimentsByStatus(Collector):
    """``experiments_total{status}``, read from PostgreSQL at scrape time.

    A gauge of the truth rather than a counter kept per process: every worker
    answers a scrape with the same numbers, and no restart loses them.
    """

    def collect(self):  # noqa: ANN201
        family = GaugeMetricFamily("experiments_total", "Experiments by status", labels=["status"])
        counts = dict.fromkeys(STATUSES, 0)
        try:
            with db.get_engine().connect() as connection:
                counts.update(connection.execute(select(Experiment.status, func.count()).group_by(Experiment.status)).all())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because PostgreSQL is down
            log.warning("experiments_total unavailable: %s", exc)
            return
        for status, count in counts.items():
            family.add_metric([status], count)
        yield family


class MolamMetrics(PrometheusMetrics):
    """The exporter plus collectors that read the database on each scrape."""

    def generate_metrics(self, accept_header=None, names=None):  # noqa: ANN001, ANN201
        content, content_type = super().generate_metrics(accept_header, names)
        if names and "experiments_total" not in names:
            return content, content_type
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ExperimentsByStatus())
        encoder, _ = choose_encoder(accept_header)
        extra = encoder(registry).decode("utf-8")
        eof = "# EOF\n"
        if content.endswith(eof):  # OpenMetrics: one terminator, at the very end
            return content[: -len(eof)] + extra, content_type
        return content + extra, content_type


def init_metrics(app: Flask) -> PrometheusMetrics:
    # Group request metrics by route template, never by path: paths carry molam_ids
    # and experiment ids, which would make the label set unbounded.
    metrics = MolamMetrics(
        app,
        group_by="url_rule",
        excluded_paths=["^/metrics$", "^/healthz$", "^/readyz$"],
    )
    app.extensions["prometheus_metrics"] = metrics
    return metrics

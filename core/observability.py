"""Prometheus exposition on ``/metrics`` (prometheus-flask-exporter).

Under gunicorn every worker is a separate process: with ``PROMETHEUS_MULTIPROC_DIR``
set (``gunicorn.conf.py`` sets it before any worker starts) prometheus_client writes
samples to per-process files there and ``/metrics`` aggregates them on each scrape,
whichever worker answers. Without it (tests, ``flask run``) the process registry
is exported as is.
"""
from __future__ import annotations

from flask import Flask
from prometheus_flask_exporter import PrometheusMetrics

import core.metrics  # noqa: F401 - declare the domain metrics before the first scrape


def init_metrics(app: Flask) -> PrometheusMetrics:
    # Group request metrics by route template, never by path: paths carry molam_ids
    # and experiment ids, which would make the label set unbounded.
    metrics = PrometheusMetrics(
        app,
        group_by="url_rule",
        excluded_paths=["^/metrics$", "^/healthz$", "^/readyz$"],
    )
    app.extensions["prometheus_metrics"] = metrics
    return metrics

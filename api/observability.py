"""Prometheus exposition on ``/metrics`` (prometheus-flask-exporter) and the request log.

Under gunicorn every worker is a separate process: with ``PROMETHEUS_MULTIPROC_DIR``
set (``gunicorn.conf.py`` sets it before any worker starts) prometheus_client writes
samples to per-process files there and ``/metrics`` aggregates them on each scrape,
whichever worker answers. Without it (tests, ``flask run``) the process registry
is exported as is.

Gauges of the database's state are read at scrape time (:class:`DatabaseCollector`),
so every worker answers with the same numbers, no restart loses them, and the
label sets of an experiment that stops running disappear from the next scrape:

* ``experiments{status}`` (and ``experiments_total{status}``, the original name, kept
  for dashboards that use it);
* per arm of each running experiment: ``sira_arm_weight``, ``sira_arm_alpha``,
  ``sira_arm_beta``, ``sira_arm_prob_best`` (SIRA's last recompute) and
  ``sira_arm_assigned_users``;
* per arm and event type: ``experiment_variant_users`` and ``experiment_variant_events``
  (the funnel, from the rollups);
* per running fixed-split experiment: ``sira_srm_p_value`` and ``sira_srm_flagged``.
"""
from __future__ import annotations

import functools
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, g, jsonify, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics
from sqlalchemy import func, select, text

import core.metrics  # noqa: F401 - declare the domain metrics before the first scrape
from core import db
from core.errors import error_body
from models import Experiment
from models.enums import STATUSES, ExperimentStatus

log = logging.getLogger(__name__)
access_log = logging.getLogger("api.access")

ARM_LABELS = ["experiment_id", "experiment", "variant_id", "variant"]

_BANDIT_STATE = text(
    "SELECT experiment_id, variant_id, alpha, beta, prob_best, weight "
    "FROM experiment_bandit_state WHERE experiment_id = ANY(:experiment_ids)"
)


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class DatabaseCollector(Collector):
    """The gauges listed in the module docstring, from PostgreSQL at scrape time."""

    #: Every family this collector can yield (the dashboard test checks queries against them).
    FAMILIES = (
        "experiments", "experiments_total",
        "sira_arm_weight", "sira_arm_alpha", "sira_arm_beta", "sira_arm_prob_best", "sira_arm_assigned_users",
        "experiment_variant_users", "experiment_variant_events",
        "sira_srm_p_value", "sira_srm_flagged",
    )

    def collect(self) -> Iterator[Metric]:
        from services.analysis.inputs import load_inputs
        from services.analysis.results import srm_block

        try:
            with db.session_scope() as session:
                counts = dict.fromkeys(STATUSES, 0)
                counts.update(session.execute(select(Experiment.status, func.count()).group_by(Experiment.status)).all())
                running = list(
                    session.execute(select(Experiment.id).where(Experiment.status == ExperimentStatus.RUNNING.value)).scalars()
                )
                experiments = load_inputs(session, running, with_config=False) if running else []
                states = {
                    (row.experiment_id, row.variant_id): row
                    for row in session.execute(_BANDIT_STATE, {"experiment_ids": running})
                } if running else {}
        except Exception as exc:  # a scrape must not fail because PostgreSQL is down
            log.warning("database gauges unavailable: %s", exc)
            return

        for name in ("experiments", "experiments_total"):
            family = _gauge(name, "Experiments by status", ["status"])
            for status, count in counts.items():
                family.add_metric([status], count)
            yield family

        arm_families = {
            "weight": _gauge("sira_arm_weight", "Share of new users SIRA sends to the arm (bandits; the split otherwise)", ARM_LABELS),
            "alpha": _gauge("sira_arm_alpha", "Beta posterior alpha of the arm's primary metric", ARM_LABELS),
            "beta": _gauge("sira_arm_beta", "Beta posterior beta of the arm's primary metric", ARM_LABELS),
            "prob_best": _gauge("sira_arm_prob_best", "Posterior probability that the arm is the best", ARM_LABELS),
        }
        assigned = _gauge("sira_arm_assigned_users", "Users assigned to the arm", ARM_LABELS)
        users = _gauge("experiment_variant_users", "Users with at least one event of the type", ARM_LABELS + ["event_type"])
        events = _gauge("experiment_variant_events", "Events of the type", ARM_LABELS + ["event_type"])
        srm_p = _gauge("sira_srm_p_value", "Sample-ratio-mismatch chi-square p-value (fixed splits)", ["experiment_id", "experiment"])
        srm_flagged = _gauge("sira_srm_flagged", "1 when the assigned split departs from the configured one", ["experiment_id", "experiment"])
        for experiment in experiments:
            for arm in experiment.arms:
                labels = [str(experiment.id), experiment.name, str(arm.variant_id), arm.name]
                assigned.add_metric(labels, arm.assigned_users)
                state = states.get((experiment.id, arm.variant_id))
                if state is not None:
                    for field, family in arm_families.items():
                        family.add_metric(labels, float(getattr(state, field)))
                for event_type, rollup in sorted(arm.rollups.items()):
                    users.add_metric(labels + [event_type], rollup.users)
                    events.add_metric(labels + [event_type], rollup.events)
            srm = srm_block(experiment)
            if srm["p_value"] is not None:
                srm_p.add_metric([str(experiment.id), experiment.name], srm["p_value"])
                srm_flagged.add_metric([str(experiment.id), experiment.name], 1.0 if srm["flagged"] else 0.0)
        yield from arm_families.values()
        yield from (assigned, users, events, srm_p, srm_flagged)


class MolamMetrics(PrometheusMetrics):
    """The exporter plus collectors that read the database on each scrape."""

    def generate_metrics(self, accept_header=None, names=None):
        content, content_type = super().generate_metrics(accept_header, names)
        if names and not set(names) & set(DatabaseCollector.FAMILIES):
            return content, content_type
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DatabaseCollector())
        encoder, _ = choose_encoder(accept_header)
        extra = encoder(registry.restricted_registry(names) if names else registry).decode("utf-8")
        eof = "# EOF\n"
        if content.endswith(eof):  # OpenMetrics: one terminator, at the very end
            return content[: -len(eof)] + extra, content_type
        return content + extra, content_type


def metrics_token_guard(token: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]] | None:
    """With ``METRICS_TOKEN`` set, ``/metrics`` answers only ``Authorization: Bearer <token>`` (else 401).

    Compared in constant time; the body is the standard error payload, as for every 401.
    """
    if not token:
        return None
    expected = token.encode()

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
                reason = "missing bearer token" if not presented.strip() else "invalid token"
                return jsonify(error_body(401, reason)), 401, {"WWW-Authenticate": "Bearer"}
            return view(*args, **kwargs)

        return guarded

    return decorate


def init_metrics(app: Flask, token: str | None = None) -> PrometheusMetrics:
    # Group request metrics by route template, never by path: paths carry molam_ids
    # and experiment ids, which would make the label set unbounded.
    metrics = MolamMetrics(
        app,
        group_by="url_rule",
        excluded_paths=["^/metrics$", "^/healthz$", "^/readyz$"],
        metrics_decorator=metrics_token_guard(token),
    )
    app.extensions["prometheus_metrics"] = metrics
    return metrics


# --------------------------------------------------------------------------- request ids and the access log

MAX_REQUEST_ID = 128
_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def incoming_request_id(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a plain token (≤ 128 of ``[A-Za-z0-9._:-]``), else a new one.

    Anything else (spaces, quotes, control characters) would let a client forge log
    lines in text mode, so it is replaced rather than trusted.
    """
    if header and len(header) <= MAX_REQUEST_ID and all(c in _REQUEST_ID_CHARS for c in header):
        return header
    return uuid.uuid4().hex


def init_request_logging(app: Flask, *, access_log_enabled: bool) -> None:
    @app.before_request
    def _start_request() -> None:
        g.request_id = incoming_request_id(request.headers.get("X-Request-ID"))
        g.request_started = time.perf_counter()

    if not access_log_enabled:
        return

    @app.after_request
    def _log_request(response):
        started = g.get("request_started")
        if started is None or not access_log.isEnabledFor(logging.INFO):
            return response
        current = request._get_current_object()  # one context lookup, not one per attribute
        path = current.path
        if path in ("/healthz", "/readyz", "/metrics"):
            return response
        method, rule, status = current.method, current.url_rule, response.status_code
        route = rule.rule if rule is not None else None
        access_log.info(
            "%s %s %d",
            method,
            route if route is not None else path,
            status,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "remote_addr": current.remote_addr,
            },
        )
        return response

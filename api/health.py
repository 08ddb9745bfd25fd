"""Liveness and readiness.

``/readyz`` names each component that is down (``postgres``, ``redis``, ``broker``) with a
generic reason (``unreachable``, ``timed out``, ``authentication failed``); the driver's
own message, which carries hosts, ports and user names, is logged and never answered.
"""
from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from core import db
from core.redis import get_redis

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


def _reason(component: str, exc: Exception) -> str:
    """A generic reason for the response; the driver's message (hosts, ports, users) goes to the log only."""
    log.warning("readiness: %s is down: %s: %s", component, type(exc).__name__, exc)
    text = f"{type(exc).__name__} {exc}".lower()
    if "timeout" in text or "timed out" in text:
        return "timed out"
    if "auth" in text or "password" in text:
        return "authentication failed"
    return "unreachable"


def _check_postgres() -> str | None:
    try:
        with db.get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # any failure means not ready
        return _reason("postgres", exc)


def _check_redis(name: str, url: str) -> str | None:
    try:
        get_redis(url).ping()
        return None
    except Exception as exc:
        return _reason(name, exc)


@blp.get("/readyz")
def readyz():
    settings = current_app.extensions["settings"]
    failures = {
        name: error
        for name, error in (
            ("postgres", _check_postgres()),
            ("redis", _check_redis("redis", settings.redis_url)),
            ("broker", _check_redis("broker", settings.celery_broker_url)),
        )
        if error is not None
    }
    checks = {name: ("down" if name in failures else "ok") for name in ("postgres", "redis", "broker")}
    if failures:
        return jsonify(status="unavailable", checks=checks, errors=failures, message="not ready: " + ", ".join(f"{name} {reason}" for name, reason in failures.items())), 503
    return jsonify(status="ok", checks=checks)

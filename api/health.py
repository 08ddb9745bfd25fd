"""Liveness and readiness."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from core import db
from core.redis import get_redis

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


def _check_postgres() -> str | None:
    try:
        with db.get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _check_redis(url: str) -> str | None:
    try:
        get_redis(url).ping()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


@blp.get("/readyz")
def readyz():
    settings = current_app.extensions["settings"]
    failures = {
        name: error
        for name, error in (
            ("postgres", _check_postgres()),
            ("redis", _check_redis(settings.redis_url)),
            ("broker", _check_redis(settings.celery_broker_url)),
        )
        if error is not None
    }
    checks = {name: ("down" if name in failures else "ok") for name in ("postgres", "redis", "broker")}
    if failures:
        return jsonify(status="unavailable", checks=checks, errors=failures, message=f"not ready: {', '.join(failures)} unreachable"), 503
    return jsonify(status="ok", checks=checks)

"""The Celery application, built by :func:`create_celery` from :class:`core.config.Settings`.

Nothing happens at import: ``celery`` below is an app whose configuration is a promise,
resolved (settings read from the environment) the first time Celery needs it, which is what
``celery -A tasks.celery_app worker|beat|flower`` does. Tests build their own app with
``create_celery(settings)``. Tasks are ``shared_task``\\ s, so they run on whichever app is
current. The database engine is created when a worker starts (``worker_init``) and again in
each forked pool child (``worker_process_init``), never inherited across a fork.
"""
from __future__ import annotations

from typing import Any

from celery import Celery, current_app
from celery.signals import worker_init, worker_process_init

import celeryconfig
from core import db
from core.config import Settings, load_settings
from core.redis import reset_clients
from services.experiments import audit

# Imported for their Celery signal handlers: logging set-up, the metrics exporters.
from . import logs as _logs  # noqa: F401 - imported for its signal handlers
from . import metrics as _metrics  # noqa: F401 - imported for its signal handlers

#: Connections per worker process (prefork children each get their own pool).
WORKER_POOL = {"pool_size": 5, "max_overflow": 5}


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` (``None``: read from the environment when first configured)."""
    app = Celery("molam_experiments", set_as_current=True)
    app.config_from_object(celeryconfig)
    if settings is not None:
        app.molam_settings = settings
    app.add_defaults(lambda: celeryconfig.from_settings(settings_of(app)))
    return app


def settings_of(app: Celery) -> Settings:
    settings = getattr(app, "molam_settings", None)
    if settings is None:
        settings = app.molam_settings = load_settings()
    return settings


def current_settings() -> Settings:
    """The settings of the app running the current task."""
    return settings_of(current_app)


def _start_engine(**_: Any) -> None:
    db.dispose_engine()
    reset_clients()
    settings = current_settings()
    db.init_engine(settings.database_url, **WORKER_POOL)
    audit.configure_keys(audit.keys_from_settings(settings))


worker_init.connect(_start_engine, weak=False, dispatch_uid="molam.worker_init")
worker_process_init.connect(_start_engine, weak=False, dispatch_uid="molam.worker_process_init")

celery = create_celery()

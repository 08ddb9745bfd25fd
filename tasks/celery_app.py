"""The Celery application: tasks run inside a Flask-free context with their own engine.

Workers fork (prefork pool): each child disposes the inherited engine and Redis
pools on ``worker_process_init`` so no connection is shared across processes.
"""
from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from core import db
from core.config import load_settings
from core.redis import reset_clients

settings = load_settings()
celery = Celery("molam_experiments")
celery.config_from_object("celeryconfig")
if not db.is_initialised():
    # A worker or beat process. When imported into a process that already has an
    # engine (the API, a test session), keep that engine rather than re-pointing it.
    db.init_engine(settings.database_url, pool_size=5, max_overflow=5)


@worker_process_init.connect
def _reset_connections_after_fork(**_: object) -> None:
    db.dispose_engine()
    reset_clients()


def current_settings():
    return settings

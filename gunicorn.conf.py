"""gunicorn settings, read from the working directory by ``gunicorn api.wsgi:app``.

Prometheus under several workers: each worker process writes its samples to files
in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` (whichever worker answers) sums
them. The variable must be set before any worker imports prometheus_client, so it
is set here, in the master, with a default under ./var; stale files from a previous
run are removed at start and a dead worker's live gauges when it exits.

Command-line options (``-w``, ``-k``, ``--threads``, ``-b``) override these defaults.
"""
from __future__ import annotations

import os
from pathlib import Path

# Importing the config first reads .env, so WEB_CONCURRENCY and friends can live there too.
from core.config import VAR_DIR, load_settings
from core.logs import gunicorn_logconfig

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus" / "api"))

_settings = load_settings()
# gunicorn's own lines (start, worker boots and deaths) in the same format as the app's.
logconfig_dict = gunicorn_logconfig(_settings.log_format, _settings.log_level)
# The app writes its own access line (route template, status, duration, request_id).
accesslog = None
# gunicornc's control socket beside the other run-time files (the default, ~/.gunicorn, is
# shared by every gunicorn of the user and read-only in the container).
control_socket = str(VAR_DIR / "gunicorn.ctl")

# Recommended for 2 cores (see bench/README.md, "Assignment"): a few processes, a few
# threads each; the threads overlap Redis/PostgreSQL round trips, keep-alive spares
# callers a TCP handshake per assignment.
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "2"))
keepalive = 5


def on_starting(server) -> None:
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def post_fork(server, worker) -> None:
    # Only matters with --preload: never share the master's sockets with a worker.
    from core import db
    from core.redis import reset_clients

    db.dispose_engine()
    reset_clients()


def post_worker_init(worker) -> None:
    # The loaded application is ~150k long-lived objects (SQLAlchemy, marshmallow,
    # numpy/scipy for SIRA): freezing them keeps the collector from walking them
    # again (a full collection costs tens of milliseconds of one worker's time).
    import gc

    gc.freeze()


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

"""Celery's logging through :mod:`core.logs`: JSON lines (or text) like the API's.

Connecting to ``setup_logging`` stops Celery from installing its own handlers; the
worker's lines then carry the running task's id and name, beat's are tagged ``beat``.
"""
from __future__ import annotations

import sys

from celery.signals import setup_logging

from core.config import load_settings
from core.logs import configure_logging


def _process_name(argv: list[str]) -> str:
    if "beat" in argv[1:]:
        return "beat"
    if "worker" in argv[1:]:
        return "worker"
    return "cli"


@setup_logging.connect
def _configure(loglevel: int | str | None = None, **_: object) -> None:
    settings = load_settings()
    level = loglevel if loglevel not in (None, 0) else settings.log_level
    configure_logging(settings.log_format, level, process=_process_name(sys.argv))

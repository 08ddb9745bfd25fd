"""Logging for every process: one JSON object per line, or text for humans (``LOG_FORMAT``).

Each line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and
``process`` (api, worker, beat, cli); API lines add the ``request_id`` of the request
being served (``null`` outside one) and worker lines the Celery ``task_id`` and
``task_name``. Secrets never reach the output: bearer tokens, JWTs, PEM private keys
and the password part of URLs are masked in the formatted line, whatever logger or
library produced it.
"""
from __future__ import annotations

import logging
import logging.config
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

#: (cheap trigger on the lower-cased line, pattern, replacement), applied to every formatted
#: line; a pattern runs only when its trigger is present, so ordinary lines cost a few
#: substring searches.
REDACTIONS: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    (("private key-----",),
     re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), "[redacted private key]"),
    (("bearer", "basic"), re.compile(r"(?i)\b(bearer|basic)(\s+|%20)[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
    (("eyj",), re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[redacted token]"),
    # scheme://user:password@host → scheme://user:***@host
    (("://",), re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@\"']*:)[^\s@/\"']+@"), r"\1***@"),
    (("password", "passwd", "secret", "api_key", "token", "requirepass"),
     re.compile(r"(?i)\b(password|passwd|secret|api_key|token|requirepass)([\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]+"), r"\1\2***"),
)


def redact(text: str) -> str:
    lowered = text.lower()
    for triggers, pattern, replacement in REDACTIONS:
        if any(trigger in lowered for trigger in triggers):
            text = pattern.sub(replacement, text)
            lowered = text.lower()
    return text


class RedactingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        from datetime import datetime, timezone

        return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")


class ContextFilter(logging.Filter):
    """Adds ``process`` to every record, ``request_id`` in the API, task ids in the worker."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process_name = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self.process_name
        if self.process_name == "api":
            record.request_id = _current_request_id()
        elif self.process_name == "worker":
            task = _current_task()
            record.task_id = getattr(task.request, "id", None) if task else None
            record.task_name = task.name if task else None
        return True


def _current_request_id() -> str | None:
    from flask import g, has_request_context

    if not has_request_context():
        return None
    return g.get("request_id")  # set first thing in every request (api.create_app)


def _current_task():
    from celery import current_task

    try:
        return current_task._get_current_object() if current_task else None
    except Exception:
        return None


_JSON_FIELDS = "%(timestamp)s %(levelname)s %(name)s %(message)s"
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(process_name)s] %(name)s: %(message)s"


def formatter(log_format: str, process: str) -> logging.Formatter:
    if log_format == "text":
        extra = " request_id=%(request_id)s" if process == "api" else ""
        return RedactingTextFormatter(_TEXT_FORMAT + extra)
    return RedactingJsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "process_name": "process"},
        timestamp=True,
        json_ensure_ascii=False,
    )


class MolamHandler(logging.StreamHandler):
    """The one output handler; a class of its own so reconfiguring replaces it, not doubles it."""


def handler(log_format: str, process: str, stream: Any = None) -> logging.Handler:
    out = MolamHandler(stream or sys.stderr)
    out.setFormatter(formatter(log_format, process))
    out.addFilter(ContextFilter(process))
    return out


#: Loggers that install handlers of their own: routed to ours instead.
_OWN_HANDLERS = ("gunicorn.error", "gunicorn.access", "celery", "celery.task", "celery.redirected")


def configure_logging(
    log_format: str = "json", level: int | str = "INFO", *, process: str, stream: Any = None
) -> logging.Handler:
    """Route every logger through one handler on the root logger; returns that handler."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, MolamHandler):
            root.removeHandler(existing)
    out = handler(log_format, process, stream)
    root.addHandler(out)
    root.setLevel(level)
    for name in _OWN_HANDLERS:
        own = logging.getLogger(name)
        own.handlers.clear()
        own.propagate = True
    logging.captureWarnings(True)
    return out


def gunicorn_logconfig(log_format: str, level: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error and access logs through the same formatter."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter, "process": "api"}},
        "formatters": {"molam": {"()": formatter, "log_format": log_format, "process": "api"}},
        "handlers": {
            "stderr": {"class": "core.logs.MolamHandler", "formatter": "molam", "filters": ["context"], "stream": "ext://sys.stderr"}
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            # The app writes the access line itself (api.access: route, status, duration, request_id).
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }

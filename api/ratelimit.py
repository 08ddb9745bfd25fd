"""Rate limiting: one budget per caller and endpoint family, counted in the request's own Redis call.

The assignment budget (``Settings.assign_rate_limit``, e.g. ``120000/minute``) is keyed by the
caller's token ``sub`` and shared by ``POST /assign`` and ``GET /assignment``. ``track``,
``POST /api/events/batch``, ``POST /api/assignments/batch``, the export and
``GET /api/audit/verify`` have budgets of their own (``POLICY_SETTINGS``): ``track`` and
the events batch spend theirs inside the Lua call that stages the events (or reads
the cache), the others in one small call of their own (:func:`spend`; those
endpoints make no Redis read to ride on). The assignment views hand :func:`budget`
to the assignment service, which spends it in the same Lua call that reads the
cached definition and assignment (:mod:`services.ratelimit`): no extra round trip,
and one counter in Redis for all gunicorn workers. A refused request gets 429 with ``Retry-After`` (seconds until
the window resets) and the standard error payload; nothing is read or stored for it.

The check runs after authentication and body validation (the service call is the
view's first Redis access), so the key is always a verified subject and neither an
unauthenticated nor a malformed request costs a counter. When Redis is unreachable
each process enforces ``limit / WEB_CONCURRENCY`` on its own counters (fail open to a
per-process budget) and goes back to Redis once it answers again.

Flask-Limiter did the same job with a second Redis round trip and its own
bookkeeping in ``before_request`` and around the view; bench/README.md
("Rate limiting") has the measurement that justified writing this by hand.
"""
from __future__ import annotations

from flask import Flask, current_app, g

from core.config import Settings
from services import ratelimit as budgets
from services.ratelimit import Budget, RatePolicy

from . import context

EXTENSION = "rate_limits"
SCOPE = "assign"
#: Each budget's scope (its Redis counter's name) and the setting that sizes it.
POLICY_SETTINGS = {
    "assign": "assign_rate_limit",
    "track": "track_rate_limit",
    "events_batch": "events_batch_rate_limit",
    "assignments_batch": "assignments_batch_rate_limit",
    "export": "export_rate_limit",
    "audit_verify": "audit_verify_rate_limit",
}


def init_rate_limiting(app: Flask, settings: Settings) -> dict[str, RatePolicy] | None:
    if not settings.rate_limit_enabled:
        return None
    policies = {
        scope: RatePolicy.parse(scope, getattr(settings, name), settings.worker_processes)
        for scope, name in POLICY_SETTINGS.items()
    }
    app.extensions[EXTENSION] = policies
    return policies


def budget(scope: str = SCOPE) -> Budget | None:
    """The current caller's budget for ``scope`` (``None`` when rate limiting is off)."""
    policies: dict[str, RatePolicy] | None = current_app.extensions.get(EXTENSION)
    return None if policies is None else policies[scope].budget(g.principal.sub)


def spend(scope: str) -> None:
    """Spend one request of the caller's ``scope`` budget now (429 with Retry-After past it)."""
    budgets.spend(context.redis_client(), budget(scope))

"""Rate limiting of the assignment endpoints: one budget per caller, counted in the request's own Redis call.

The budget (``Settings.assign_rate_limit``, e.g. ``120000/minute``) is keyed by the
caller's token ``sub`` and shared by ``POST /assign`` and ``GET /assignment``. The
views hand :func:`budget` to the assignment service, which spends it in the same
Lua call that reads the cached definition and assignment
(:mod:`services.ratelimit`): no extra round trip, and one counter in Redis for all
gunicorn workers. A refused request gets 429 with ``Retry-After`` (seconds until
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
from services.ratelimit import Budget, RatePolicy

EXTENSION = "assign_rate_limit"
SCOPE = "assign"


def init_rate_limiting(app: Flask, settings: Settings) -> RatePolicy | None:
    if not settings.rate_limit_enabled:
        return None
    policy = RatePolicy.parse(SCOPE, settings.assign_rate_limit, settings.worker_processes)
    app.extensions[EXTENSION] = policy
    return policy


def budget() -> Budget | None:
    """The current caller's assignment budget (``None`` when rate limiting is off)."""
    policy: RatePolicy | None = current_app.extensions.get(EXTENSION)
    return None if policy is None else policy.budget(g.principal.sub)

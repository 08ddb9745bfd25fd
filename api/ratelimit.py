"""Rate limiting of the assignment endpoints: Flask-Limiter on Redis, one budget per caller.

The budget (``Settings.assign_rate_limit``, e.g. ``120000/minute``) is keyed by the
caller's token ``sub`` and shared by ``POST /assign`` and ``GET /assignment``.
The check runs after authentication (``@require`` wraps ``@rate_limited``), so the
key is always a verified subject and an unauthenticated request costs no counter.

Each app gets its own :class:`~flask_limiter.Limiter` (tests build several apps in
one process, pointing at different Redis servers). When Redis is unreachable the
limiter falls back to per-process in-memory counters rather than failing requests,
and goes back to Redis once it answers again.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, TypeVar

from flask import Flask, current_app, g, jsonify
from flask_limiter import Limiter, RateLimitExceeded

from core.config import Settings
from core.errors import error_body

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

EXTENSION = "assign_rate_limit"
SCOPE = "assign"


def _caller() -> str:
    return g.principal.sub


def init_rate_limiting(app: Flask, settings: Settings) -> Limiter | None:
    if not settings.rate_limit_enabled:
        return None
    limiter = Limiter(
        key_func=_caller,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 0.5, "socket_timeout": 1.0},
        # One INCR+EXPIRE round trip per request; the sliding variants cost more.
        strategy="fixed-window",
        key_prefix="ratelimit",
        # Headers on every response would cost a second Redis read per request;
        # Retry-After is computed only for refused requests (below).
        headers_enabled=False,
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.init_app(app)
    decorate = limiter.shared_limit(settings.assign_rate_limit, scope=SCOPE, key_func=_caller)
    app.extensions[EXTENSION] = {"limiter": limiter, "decorate": decorate, "views": {}}

    @app.errorhandler(RateLimitExceeded)
    def too_many_requests(error: RateLimitExceeded):  # noqa: ANN202
        retry_after = 1
        try:
            current = limiter.current_limit
            if current is not None:
                retry_after = max(1, int(current.reset_at - time.time()))
        except Exception as exc:  # noqa: BLE001 - the refusal stands; only the hint is lost
            log.warning("could not compute Retry-After: %s", exc)
        message = f"rate limit of {error.description} per caller exceeded; retry after {retry_after} s"
        return jsonify(error_body(429, message)), 429, {"Retry-After": str(retry_after)}

    return limiter


def rate_limited(view: F) -> F:
    """Apply the app's assignment budget to ``view`` (a no-op when rate limiting is off)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = current_app.extensions.get(EXTENSION)
        if state is None:
            return view(*args, **kwargs)
        limited = state["views"].get(view)
        if limited is None:
            limited = state["views"].setdefault(view, state["decorate"](view))
        return limited(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

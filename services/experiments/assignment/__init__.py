"""Sticky assignment of users to variants: eligibility, split, bandit draw, persistence.

* :mod:`.allocation`: who gets which arm (fixed split, bandit draw, targeting,
  coverage, layers, holdouts), pure functions of a definition and a user;
* :mod:`.cache`: the copies in Redis, read in one round trip that also spends the
  caller's budget, and the outage breaker;
* :mod:`.store`: the PostgreSQL row that is the truth, on a connection each thread keeps;
* :mod:`.service`: :func:`assign` and :func:`stored_assignment`, which the API calls.
"""
from .allocation import (
    UserContext,
    draw_weights,
    holdouts_of,
    in_coverage,
    outside_layer,
    period_id,
    split_boundaries,
    split_probability,
    targeting_reason,
    variant_for_bucket,
)
from .cache import mark_redis_down
from .service import assign, require_permitted, stored_assignment

__all__ = [
    "UserContext",
    "assign",
    "draw_weights",
    "holdouts_of",
    "in_coverage",
    "mark_redis_down",
    "outside_layer",
    "period_id",
    "require_permitted",
    "split_boundaries",
    "split_probability",
    "stored_assignment",
    "targeting_reason",
    "variant_for_bucket",
]

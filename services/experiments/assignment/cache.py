"""The assignment's copies in Redis, and reads that degrade instead of failing.

One round trip per request (:func:`read_cached`) spends the caller's budget and
reads the cached definition, the user's assignment and the bandit weights. A Redis
error marks the client down for :data:`REDIS_RETRY_AFTER_S` (the service then
answers from PostgreSQL and the budget is counted in the process) instead of paying
a connection timeout on every request. PostgreSQL holds the truth; these copies
only spare it the returning users.
"""
from __future__ import annotations

import json
import logging
from typing import NamedTuple

import redis

from core import redis as redis_state

from ...cache import assignment_key, definition_key, weights_key
from ...ratelimit import Budget, read_with_budget
from ..definitions import Definition, VariantDefinition

log = logging.getLogger(__name__)

# PostgreSQL is the truth; the copy only needs to outlive a user's session of activity.
ASSIGNMENT_TTL_S = 7 * 24 * 3600
# After a Redis failure, go straight to PostgreSQL for this long instead of paying a
# connection timeout on every request.
REDIS_RETRY_AFTER_S = 2.0


def mark_redis_down(client: redis.Redis, exc: Exception) -> None:
    log.warning("Redis unavailable, answering from PostgreSQL for %.0f s: %s", REDIS_RETRY_AFTER_S, exc)
    redis_state.mark_down(client, REDIS_RETRY_AFTER_S)


def cache_assignment(client: redis.Redis | None, experiment_id: str, molam_id: str, variant_id: str, assigned_at: str) -> None:
    if client is None:
        return
    payload = json.dumps({"variant_id": variant_id, "assigned_at": assigned_at}, separators=(",", ":"))
    try:
        # execute_command: redis-py's set() inspects its keyword arguments on every call.
        client.execute_command("SET", assignment_key(experiment_id, molam_id), payload, "EX", ASSIGNMENT_TTL_S)
    except redis.RedisError as exc:
        mark_redis_down(client, exc)


class Cached(NamedTuple):
    """What one round trip brought back: the client to keep using (None: Redis is down) and the raw copies."""

    client: redis.Redis | None
    definition: bytes | None
    assignment: bytes | None
    weights: bytes | None


_REDIS_DOWN = Cached(None, None, None, None)


def read_cached(client: redis.Redis | None, experiment_id: str, molam_id: str, budget: Budget | None) -> Cached:
    """One round trip: spend the caller's budget, read the definition, the assignment and the bandit weights.

    Raises :class:`RateLimited` when the budget is spent; when Redis is down the
    budget is spent in this process instead and nothing is cached.
    """
    client = redis_state.usable(client)
    if client is not None:
        keys = [definition_key(experiment_id), assignment_key(experiment_id, molam_id), weights_key(experiment_id)]
        try:
            raw_definition, raw_assignment, raw_weights = read_with_budget(client, budget, keys)
        except redis.RedisError as exc:
            mark_redis_down(client, exc)
        else:
            return Cached(client, raw_definition, raw_assignment, raw_weights)
    if budget is not None:
        budget.spend_locally()
    return _REDIS_DOWN


def cached_holdout(raw: bytes | None) -> bool:
    """The assignment key holds ``{"holdout_ids": [...]}`` for a user recorded as a holdout member."""
    if raw is None or b"holdout_ids" not in raw:
        return False
    try:
        return bool(json.loads(raw).get("holdout_ids"))
    except (ValueError, AttributeError):
        return False


def cached_variant(definition: Definition, raw: bytes | None) -> tuple[VariantDefinition, str] | None:
    if raw is None:
        return None
    try:
        cached = json.loads(raw)
        variant = definition.by_id.get(cached["variant_id"])
        assigned_at = cached["assigned_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return (variant, assigned_at) if variant is not None else None


def cache_holdout_member(client: redis.Redis | None, experiment_id: str, molam_id: str, holdout_ids: list[str]) -> None:
    """The answer, cached in the assignment key, so a returning member costs one round trip."""
    if client is None:
        return
    payload = json.dumps({"holdout_ids": holdout_ids}, separators=(",", ":"))
    try:
        client.execute_command("SET", assignment_key(experiment_id, molam_id), payload, "EX", ASSIGNMENT_TTL_S)
    except redis.RedisError as exc:
        mark_redis_down(client, exc)

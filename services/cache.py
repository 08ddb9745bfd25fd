"""Redis keys shared by the API and the workers, in one place."""
from __future__ import annotations

import logging
import uuid

import redis

log = logging.getLogger(__name__)


def definition_key(experiment_id: uuid.UUID | str) -> str:
    return f"exp:def:{experiment_id}"


def assignment_key(experiment_id: uuid.UUID | str, molam_id: str) -> str:
    """The cached sticky assignment: JSON ``{variant_id, assigned_at}`` (PostgreSQL is the truth)."""
    return f"exp:asg:{experiment_id}:{molam_id}"


def weights_key(experiment_id: uuid.UUID | str) -> str:
    """Bandit weights published by SIRA: JSON ``{weights: {variant_id: p}, burn_in, computed_at}``."""
    return f"sira:weights:{experiment_id}"


def invalidate_definition(client: redis.Redis, experiment_id: uuid.UUID | str) -> bool:
    """Drop the cached definition; returns False (and logs) when Redis is unreachable."""
    try:
        client.delete(definition_key(experiment_id))
        return True
    except redis.RedisError as exc:
        log.warning("could not invalidate cached definition of %s: %s", experiment_id, exc)
        return False

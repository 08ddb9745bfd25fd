"""Every Redis key the API and the workers use, in one place.

Definition and assignment caches and published weights can be rebuilt from PostgreSQL; the
staged event stream and the drain's coordination keys cannot (see ``docs/architecture.md``).
"""
from __future__ import annotations

import logging
import uuid

import redis
from sqlalchemy.orm import Session

from core.errors import Unavailable

log = logging.getLogger(__name__)

#: The staged event stream (drained into PostgreSQL, acknowledged after the commit) and its consumer group.
STREAM_KEY = "ingest:events"
STREAM_GROUP = "ingest-writers"
#: Hash: stream entries waiting per caller (field: the caller); the enqueue adds, the drain's acknowledgement subtracts.
STREAM_CALLER_ENTRIES_KEY = "ingest:backlog:callers"
#: Set while a successor drain is queued, so a backlog keeps at most one extra run in the queue.
DRAIN_SUCCESSOR_FLAG = "ingest:drain:queued"
#: While PostgreSQL keeps failing, drains skip beat ticks until this time (and count failures).
DRAIN_BACKOFF_KEY = "ingest:drain:backoff_until"
DRAIN_FAILURES_KEY = "ingest:drain:failures"


def definition_key(experiment_id: uuid.UUID | str) -> str:
    return f"exp:def:{experiment_id}"


def assignment_key(experiment_id: uuid.UUID | str, molam_id: str) -> str:
    """The cached sticky assignment: JSON ``{variant_id, assigned_at}`` (PostgreSQL is the truth)."""
    return f"exp:asg:{experiment_id}:{molam_id}"


def weights_key(experiment_id: uuid.UUID | str) -> str:
    """Bandit weights published by SIRA: JSON ``{weights: {variant_id: p}, burn_in, period, computed_at}``

    ``period`` numbers the weights in force (0 = the configured shares); the assignment
    path records it on every row as part of the allocation period.
    """
    return f"sira:weights:{experiment_id}"


def rate_limit_key(scope: str, caller: str) -> str:
    """A caller's fixed-window request counter (``INCR``; the key lives for one window)."""
    return f"ratelimit:{scope}:{caller}"


def invalidate_definition(client: redis.Redis, experiment_id: uuid.UUID | str) -> bool:
    """Drop the cached definition; returns False (and logs) when Redis is unreachable."""
    try:
        client.delete(definition_key(experiment_id))
        return True
    except redis.RedisError as exc:
        log.warning("could not invalidate cached definition of %s: %s", experiment_id, exc)
        return False


def d7_key(experiment_id: uuid.UUID | str) -> str:
    """Day-7 retention counts computed by the recompute job: JSON per variant."""
    return f"sira:d7:{experiment_id}"


def commit_invalidating(session: Session, client: redis.Redis | None, experiment_id: uuid.UUID | str) -> None:
    """Commit a mutation of an experiment so that no process keeps serving its old definition.

    The cached definition is dropped before the commit (when Redis cannot be reached the
    mutation is rolled back and :class:`Unavailable` raised) and again after it, so an
    assign racing with the commit cannot re-cache the old version; SDK clients are then
    told that the definitions changed. Used by the API's mutations and by SIRA's
    automatic actions alike.
    """
    if client is None or not invalidate_definition(client, experiment_id):
        session.rollback()
        raise Unavailable("Redis is unreachable: the cached definition (assignment cache) cannot be invalidated; retry shortly", retry_after=2)
    session.commit()
    invalidate_definition(client, experiment_id)
    announce_definitions_change(client)


# --- the SDK definitions snapshot (services.sdk.definitions) ---------------------------

SDK_DEFINITIONS_VERSION_KEY = "sdk:defs:version"
SDK_DEFINITIONS_SNAPSHOT_KEY = "sdk:defs:snapshot"


def new_definitions_version() -> str:
    """A fresh random version token. Random rather than a counter: after a Redis flush or
    restart a counter would start again at numbers that label old snapshots."""
    return uuid.uuid4().hex


def announce_definitions_change(client: redis.Redis | None) -> bool:
    """Tell SDK clients that the set of running definitions may have changed.

    Called after the commit of anything that changes what ``GET /api/sdk/definitions``
    returns (start, stop, pause, resume, published bandit weights): bumping the version
    (a new random token) makes every API process rebuild the snapshot and every open stream announce the new
    ETag. Returns False (and logs) when Redis is unreachable; snapshots then catch up
    within their maximum age.
    """
    if client is None:
        return False
    try:
        client.set(SDK_DEFINITIONS_VERSION_KEY, new_definitions_version())
        return True
    except redis.RedisError as exc:
        log.warning("could not announce a definitions change to SDK clients: %s", exc)
        return False

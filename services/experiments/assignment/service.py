"""Sticky assignment of users to variants: the service the assign and lookup endpoints call.

PostgreSQL holds the truth (``experiment_assignments``, unique on experiment and
``molam_id``, :mod:`.store`); Redis holds a copy of each assignment and of the
experiment definition (:mod:`.cache`) so that a returning user costs one round trip
and nothing else. Who gets which arm is :mod:`.allocation`.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import redis

from core.errors import Conflict, Forbidden, NotFound, Unavailable
from core.metrics import EXPERIMENT_ASSIGNMENTS, SIRA_DECISION_LATENCY

from ...ratelimit import Budget
from ..definitions import Definition, VariantDefinition, load_definition, parse_definition
from .allocation import UserContext, choose, holdouts_of, in_coverage, outside_layer, targeting_reason
from .cache import Cached, cache_assignment, cache_holdout_member, cached_holdout, cached_variant, read_cached
from .store import (
    DATABASE_DOWN,
    DATABASE_RETRY_AFTER_S,
    existing_assignment,
    insert_assignment,
    on_held,
    record_holdout_member,
)

# --- responses -------------------------------------------------------------------------


def iso_timestamp(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _assigned(definition: Definition, molam_id: str, variant: VariantDefinition, assigned_at: str, new: bool) -> dict[str, Any]:
    return {
        "experiment_id": definition.id,
        "molam_id": molam_id,
        "eligible": True,
        "variant_id": variant.id,
        "variant_name": variant.name,
        "is_control": variant.is_control,
        "config": variant.config,
        "assigned_at": assigned_at,
        "new": new,
    }


def _not_eligible(definition: Definition, molam_id: str, reason: str) -> dict[str, Any]:
    return {"experiment_id": definition.id, "molam_id": molam_id, "eligible": False, "variant_id": None, "reason": reason}


def _stored(definition: Definition, molam_id: str, variant: VariantDefinition, assigned_at: str) -> dict[str, Any]:
    """The recorded assignment (``GET``): the assign answer without ``eligible`` and ``new``."""
    answer = _assigned(definition, molam_id, variant, assigned_at, new=False)
    del answer["eligible"], answer["new"]
    return answer


def _definition(client: redis.Redis | None, experiment_id: str, raw: bytes | None) -> Definition:
    if raw is not None:
        return parse_definition(raw)
    try:
        return load_definition(experiment_id, client)
    except DATABASE_DOWN as exc:
        raise Unavailable(
            "PostgreSQL is unreachable and the experiment definition is not cached; retry shortly",
            retry_after=DATABASE_RETRY_AFTER_S,
        ) from exc


# --- the service -----------------------------------------------------------------------


def require_permitted(definition: Definition, caller_roles: tuple[str, ...] | None) -> None:
    """Forbidden (403) when the experiment's ``allowed_services`` leave the caller out.

    ``caller_roles=None`` is an internal call (no caller to scope).
    """
    if caller_roles is not None and not definition.permits(caller_roles):
        raise Forbidden(
            f"experiment {definition.id} does not allow the service role(s) {', '.join(caller_roles)}",
            errors={"json": {"experiment_id": ["this service may not assign or track on the experiment"]}},
        )


def assign(
    client: redis.Redis | None,
    experiment_id: uuid.UUID | str,
    user: UserContext,
    budget: Budget | None = None,
    caller_roles: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Return the user's variant, deciding and recording it on the first call.

    A returning user with a warm cache costs one Redis round trip (which also spends
    the caller's ``budget``) and no database connection. Raises RateLimited, Forbidden
    (the experiment's ``allowed_services`` leave ``caller_roles`` out), NotFound
    (unknown experiment), Conflict (not running) and Unavailable (PostgreSQL down and
    the answer is not cached).
    """
    experiment_id = str(experiment_id)
    cached = read_cached(client, experiment_id, user.molam_id, budget)
    definition = _definition(cached.client, experiment_id, cached.definition)
    require_permitted(definition, caller_roles)
    if not definition.is_running:
        raise Conflict(f"experiment {experiment_id} is {definition.status}; users are assigned only while it is running")
    # The layer range is the truth even for a returning user: after a stop and restart
    # the experiment may own other buckets, and the user may now belong to another
    # experiment of the layer.
    if outside_layer(definition, user.molam_id):
        return _not_eligible(definition, user.molam_id, "layer")
    held = cached_variant(definition, cached.assignment)
    if held is not None:
        return _assigned(definition, user.molam_id, held[0], held[1], new=False)
    if cached_holdout(cached.assignment):
        return _not_eligible(definition, user.molam_id, "holdout")
    with SIRA_DECISION_LATENCY.time():
        try:
            return _decide(cached, definition, user)
        except DATABASE_DOWN as exc:
            raise Unavailable(
                "PostgreSQL is unreachable: new assignments cannot be recorded; retry shortly",
                retry_after=DATABASE_RETRY_AFTER_S,
            ) from exc


def _decide(cached: Cached, definition: Definition, user: UserContext) -> dict[str, Any]:
    client = cached.client
    reason = targeting_reason(definition, user)
    if reason is not None:
        # The request's attributes may have changed since the user was assigned:
        # an assignment, once made, is kept (sticky) whatever the user sends later.
        row = on_held(existing_assignment, definition.id, user.molam_id)
        if row is None:
            return _not_eligible(definition, user.molam_id, reason)
        return _finish(client, definition, user.molam_id, row, new=False)
    # Coverage cannot change once an experiment has started, so a user outside it
    # can never have been assigned: no lookup needed.
    if not in_coverage(definition, user.molam_id):
        return _not_eligible(definition, user.molam_id, "outside_coverage")
    held_out = holdouts_of(definition, user.molam_id)
    if held_out:
        on_held(record_holdout_member, definition.id, user.molam_id, held_out)
        cache_holdout_member(client, definition.id, user.molam_id, held_out)
        return _not_eligible(definition, user.molam_id, "holdout")
    for _attempt in range(2):
        variant, probability, period = choose(definition, user.molam_id, cached.weights)
        row = on_held(insert_assignment, definition.id, variant.id, user, period, probability)
        if row is not None:
            EXPERIMENT_ASSIGNMENTS.labels(experiment_id=definition.id).inc()
            return _finish(client, definition, user.molam_id, row, new=True)
        row = on_held(existing_assignment, definition.id, user.molam_id)
        if row is not None:
            return _finish(client, definition, user.molam_id, row, new=False)
        # Nothing inserted and nothing there: the cached definition is stale (the
        # experiment stopped or the chosen arm was paused). Re-read it once.
        definition = load_definition(definition.id, client)
        if not definition.is_running:
            raise Conflict(f"experiment {definition.id} is {definition.status}; users are assigned only while it is running")
    raise Unavailable("the experiment changed during assignment; retry", retry_after=1)


def _resolve_row(
    client: redis.Redis | None, definition: Definition, molam_id: str, row: tuple[Any, datetime]
) -> tuple[Definition, VariantDefinition, str]:
    """The stored row's variant (re-reading a definition that lacks it), cached for next time."""
    variant_id, assigned_at = str(row[0]), iso_timestamp(row[1])
    variant = definition.by_id.get(variant_id)
    if variant is None:
        # The stored variant is not in this copy of the definition: read a fresh one.
        definition = load_definition(definition.id, client)
        variant = definition.by_id[variant_id]
    cache_assignment(client, definition.id, molam_id, variant_id, assigned_at)
    return definition, variant, assigned_at


def _finish(client: redis.Redis | None, definition: Definition, molam_id: str, row: tuple[Any, datetime], *, new: bool) -> dict[str, Any]:
    definition, variant, assigned_at = _resolve_row(client, definition, molam_id, row)
    return _assigned(definition, molam_id, variant, assigned_at, new=new)


def stored_assignment(
    client: redis.Redis | None,
    experiment_id: uuid.UUID | str,
    molam_id: str,
    budget: Budget | None = None,
    caller_roles: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The user's recorded assignment (any experiment status); NotFound when there is none."""
    experiment_id = str(experiment_id)
    cached = read_cached(client, experiment_id, molam_id, budget)
    client = cached.client
    definition = _definition(client, experiment_id, cached.definition)
    require_permitted(definition, caller_roles)
    held = cached_variant(definition, cached.assignment)
    if held is not None:
        return _stored(definition, molam_id, held[0], held[1])
    try:
        row = on_held(existing_assignment, experiment_id, molam_id)
    except DATABASE_DOWN as exc:
        raise Unavailable("PostgreSQL is unreachable and this assignment is not cached; retry shortly", retry_after=DATABASE_RETRY_AFTER_S) from exc
    if row is None:
        raise NotFound(f"{molam_id!r} has no assignment in experiment {experiment_id}")
    definition, variant, assigned_at = _resolve_row(client, definition, molam_id, row)
    return _stored(definition, molam_id, variant, assigned_at)

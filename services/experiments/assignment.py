"""Sticky assignment of users to variants: eligibility, split, bandit draw, persistence.

PostgreSQL holds the truth (``experiment_assignments``, unique on experiment and
``molam_id``); Redis holds a copy of each assignment and of the experiment
definition so that a returning user costs one ``MGET`` and nothing else.

Fixed split (documented in docs/assignment.md)::

    bucket   = int.from_bytes(sha256(f"{experiment_id}:{molam_id}").digest()[:8], "big") % 10_000
    coverage = int.from_bytes(sha256(f"coverage:{experiment_id}:{molam_id}").digest()[:8], "big") % 10_000

A user is enrolled when ``coverage < experiment.coverage * 100``; the variant is the
one whose slice of the cumulative traffic shares (in hundredths of a percent, so
exactly 10,000 buckets) contains ``bucket``. Paused arms are skipped and the other
shares renormalised. Any process computes the same answer without coordination.
"""
from __future__ import annotations

import bisect
import json
import logging
import math
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple, cast

import psycopg
import redis
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from core import db
from core import redis as redis_state
from core.errors import Conflict, Forbidden, NotFound, Unavailable
from core.metrics import EXPERIMENT_ASSIGNMENTS, SIRA_DECISION_LATENCY
from models.enums import TARGETING_LIST_KEYS, ExperimentMode, ExperimentStatus
from sira.bandit import draw_arm

from ..cache import assignment_key, definition_key, weights_key
from ..ratelimit import Budget, read_with_budget
from .buckets import BUCKETS, coverage_bucket, holdout_bucket, layer_bucket, percent_to_buckets, split_bucket
from .definitions import Definition, VariantDefinition, load_definition, parse_definition

log = logging.getLogger(__name__)

# PostgreSQL is the truth; the copy only needs to outlive a user's session of activity.
ASSIGNMENT_TTL_S = 7 * 24 * 3600
# After a Redis failure, go straight to PostgreSQL for this long instead of paying a
# connection timeout on every request.
REDIS_RETRY_AFTER_S = 2.0
DATABASE_RETRY_AFTER_S = 2

_DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)

# Run on the driver's cursor (psycopg named parameters): on the miss path SQLAlchemy's
# statement and result machinery cost more CPU than the statement itself.
_INSERT_ASSIGNMENT = """
    INSERT INTO experiment_assignments
        (experiment_id, variant_id, molam_id, country, lang, currency, region, device, period, probability,
         txn_count, pre_exposure_value)
    SELECT %(experiment_id)s, %(variant_id)s, %(molam_id)s, %(country)s, %(lang)s, %(currency)s, %(region)s, %(device)s,
           %(period)s, %(probability)s, %(txn_count)s, %(pre_exposure_value)s
    WHERE EXISTS (
        SELECT 1 FROM experiments e JOIN experiment_variants v ON v.experiment_id = e.id
        WHERE e.id = %(experiment_id)s AND e.status = %(running)s AND v.id = %(variant_id)s AND NOT v.paused
    )
    ON CONFLICT (experiment_id, molam_id) DO NOTHING
    RETURNING variant_id, assigned_at
"""
_INSERT_HOLDOUT_MEMBERS = """
    INSERT INTO experiment_holdout_members (holdout_id, molam_id, first_experiment_id)
    SELECT h, %(molam_id)s, %(experiment_id)s FROM unnest(%(holdout_ids)s::uuid[]) AS h
    ON CONFLICT (holdout_id, molam_id) DO NOTHING
"""
_SELECT_ASSIGNMENT = (
    "SELECT variant_id, assigned_at FROM experiment_assignments "
    "WHERE experiment_id = %(experiment_id)s AND molam_id = %(molam_id)s"
)


@dataclass(frozen=True, slots=True)
class UserContext:
    """What the calling product knows about the user at assignment time."""

    molam_id: str
    country: str | None = None
    lang: str | None = None
    currency: str | None = None
    region: str | None = None
    device: str | None = None
    txn_count: int | None = None
    # Known before exposure (e.g. last-30-day spend in the reporting currency): CUPED's covariate.
    pre_exposure_value: float | None = None


# --- hashing and the split -------------------------------------------------------------


def _hundredths(value: float) -> int:
    return int(round(value * 100))


def period_id(version: int, weights_period: int) -> int:
    """The allocation period an assignment is made in: (definition version, published weights).

    Every change of the split changes one of the two: a pause, a resume or a restart
    bumps the experiment's version, and each replacement of a bandit's weights bumps
    the ``period`` SIRA publishes with them (0 while the configured shares apply).
    Ordering by the id is chronological.
    """
    return (version << 32) | weights_period


def in_coverage(definition: Definition, molam_id: str) -> bool:
    threshold = _hundredths(definition.coverage)
    return threshold >= BUCKETS or coverage_bucket(definition.id, molam_id) < threshold


def split_boundaries(definition: Definition) -> tuple[tuple[int, ...], tuple[VariantDefinition, ...]]:
    """Upper bucket bounds of each active arm, memoised on the (immutable) definition."""
    cached = definition.derived.get("split")
    if cached is not None:
        return cached
    active = definition.active_variants
    shares = [_hundredths(v.traffic_share) for v in active]
    if sum(shares) <= 0:
        # Every remaining arm has a zero share: split evenly rather than refuse users.
        shares = [1] * len(active)
    total = sum(shares)
    bounds, running = [], 0
    for share in shares:
        running += share
        bounds.append(running * BUCKETS // total)
    result = (tuple(bounds), active)
    definition.derived["split"] = result
    return result


def variant_for_bucket(definition: Definition, bucket: int) -> VariantDefinition:
    bounds, active = split_boundaries(definition)
    return active[bisect.bisect_right(bounds, bucket)]


def split_probability(definition: Definition, variant: VariantDefinition) -> float:
    """The share of buckets the fixed split gives ``variant`` (its assignment probability)."""
    probabilities = definition.derived.get("split_probability")
    if probabilities is None:
        bounds, active = split_boundaries(definition)
        lower = (0,) + bounds[:-1]
        probabilities = {v.id: (upper - low) / BUCKETS for v, low, upper in zip(active, lower, bounds)}
        definition.derived["split_probability"] = probabilities
    return probabilities[variant.id]


def draw_weights(
    definition: Definition, published: dict[str, Any] | None
) -> tuple[list[tuple[VariantDefinition, float]], int]:
    """(draw weight per active arm, weights period) for a bandit's next draw.

    SIRA's published P(best) once it has left burn-in (the published period), else the
    traffic shares (period 0); arms paused in the definition get nothing whatever SIRA
    published.
    """
    active = definition.active_variants
    if published and not published.get("burn_in"):
        weights = published.get("weights") or {}
        drawn = []
        for variant in active:
            try:
                weight = float(weights.get(variant.id, 0.0))
            except (TypeError, ValueError):
                weight = 0.0
            drawn.append((variant, weight if math.isfinite(weight) and weight > 0 else 0.0))
        if sum(w for _, w in drawn) > 0:
            period = published.get("period")
            return drawn, period if isinstance(period, int) and 0 < period < 1 << 32 else 0
    shares = [(v, float(_hundredths(v.traffic_share))) for v in active]
    if sum(w for _, w in shares) <= 0:
        return [(v, 1.0) for v in active], 0
    return shares, 0


# --- eligibility -----------------------------------------------------------------------


def targeting_reason(definition: Definition, user: UserContext) -> str | None:
    """Why the request does not match the targeting, or None when it does.

    A list in the targeting is a whitelist; a request that omits an attribute the
    experiment targets on cannot be shown to match it.
    """
    targeting = definition.targeting
    if not targeting:
        return None
    for key in TARGETING_LIST_KEYS:
        allowed = targeting.get(key)
        if allowed:
            value = getattr(user, key)
            if value is None:
                return f"{key}_missing"
            if value not in allowed:
                return f"{key}_not_targeted"
    min_txn = targeting.get("min_txn")
    if min_txn:
        if user.txn_count is None:
            return "txn_count_missing"
        if user.txn_count < min_txn:
            return "below_min_txn"
    return None


def outside_layer(definition: Definition, molam_id: str) -> bool:
    """True when the user's layer bucket is not in the experiment's range (or it has none)."""
    if definition.layer_id is None:
        return False
    if definition.layer_range is None:
        return True
    start, end = definition.layer_range
    return not start <= layer_bucket(definition.layer_id, molam_id) < end


def holdouts_of(definition: Definition, molam_id: str) -> list[str]:
    """The experiment's holdouts that keep this user out."""
    return [
        holdout_id
        for holdout_id, percent in definition.holdouts
        if holdout_bucket(holdout_id, molam_id) < percent_to_buckets(percent)
    ]


# --- responses -------------------------------------------------------------------------


def _iso(value: datetime | str) -> str:
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


# --- Redis access that degrades instead of failing --------------------------------------

def mark_redis_down(client: redis.Redis, exc: Exception) -> None:
    log.warning("Redis unavailable, answering from PostgreSQL for %.0f s: %s", REDIS_RETRY_AFTER_S, exc)
    redis_state.mark_down(client, REDIS_RETRY_AFTER_S)


def _cache_assignment(client: redis.Redis | None, experiment_id: str, molam_id: str, variant_id: str, assigned_at: str) -> None:
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


def _read_cached(client: redis.Redis | None, experiment_id: str, molam_id: str, budget: Budget | None) -> Cached:
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


def _definition(client: redis.Redis | None, experiment_id: str, raw: bytes | None) -> Definition:
    if raw is not None:
        return parse_definition(raw)
    try:
        return load_definition(experiment_id, client)
    except _DATABASE_DOWN as exc:
        raise Unavailable(
            "PostgreSQL is unreachable and the experiment definition is not cached; retry shortly",
            retry_after=DATABASE_RETRY_AFTER_S,
        ) from exc


def _cached_holdout(raw: bytes | None) -> bool:
    """The assignment key holds ``{"holdout_ids": [...]}`` for a user recorded as a holdout member."""
    if raw is None or b"holdout_ids" not in raw:
        return False
    try:
        return bool(json.loads(raw).get("holdout_ids"))
    except (ValueError, AttributeError):
        return False


def _cached_variant(definition: Definition, raw: bytes | None) -> tuple[VariantDefinition, str] | None:
    if raw is None:
        return None
    try:
        cached = json.loads(raw)
        variant = definition.by_id.get(cached["variant_id"])
        assigned_at = cached["assigned_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return (variant, assigned_at) if variant is not None else None


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
    cached = _read_cached(client, experiment_id, user.molam_id, budget)
    definition = _definition(cached.client, experiment_id, cached.definition)
    require_permitted(definition, caller_roles)
    if not definition.is_running:
        raise Conflict(f"experiment {experiment_id} is {definition.status}; users are assigned only while it is running")
    # The layer range is the truth even for a returning user: after a stop and restart
    # the experiment may own other buckets, and the user may now belong to another
    # experiment of the layer.
    if outside_layer(definition, user.molam_id):
        return _not_eligible(definition, user.molam_id, "layer")
    held = _cached_variant(definition, cached.assignment)
    if held is not None:
        return _assigned(definition, user.molam_id, held[0], held[1], new=False)
    if _cached_holdout(cached.assignment):
        return _not_eligible(definition, user.molam_id, "holdout")
    with SIRA_DECISION_LATENCY.time():
        try:
            return _decide(cached, definition, user)
        except _DATABASE_DOWN as exc:
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
        row = _on_held(_existing, definition.id, user.molam_id)
        if row is None:
            return _not_eligible(definition, user.molam_id, reason)
        return _finish(client, definition, user.molam_id, row, new=False)
    # Coverage cannot change once an experiment has started, so a user outside it
    # can never have been assigned: no lookup needed.
    if not in_coverage(definition, user.molam_id):
        return _not_eligible(definition, user.molam_id, "outside_coverage")
    held_out = holdouts_of(definition, user.molam_id)
    if held_out:
        _on_held(_record_holdout_member, definition.id, user.molam_id, held_out)
        _cache_holdout_member(client, definition.id, user.molam_id, held_out)
        return _not_eligible(definition, user.molam_id, "holdout")
    for _attempt in range(2):
        variant, probability, period = _choose(definition, user.molam_id, cached.weights)
        row = _on_held(_insert, definition.id, variant.id, user, period, probability)
        if row is not None:
            EXPERIMENT_ASSIGNMENTS.labels(experiment_id=definition.id).inc()
            return _finish(client, definition, user.molam_id, row, new=True)
        row = _on_held(_existing, definition.id, user.molam_id)
        if row is not None:
            return _finish(client, definition, user.molam_id, row, new=False)
        # Nothing inserted and nothing there: the cached definition is stale (the
        # experiment stopped or the chosen arm was paused). Re-read it once.
        definition = load_definition(definition.id, client)
        if not definition.is_running:
            raise Conflict(f"experiment {definition.id} is {definition.status}; users are assigned only while it is running")
    raise Unavailable("the experiment changed during assignment; retry", retry_after=1)


class _HeldConnection(threading.local):
    engine: Any = None
    connection: Connection | None = None


_held = _HeldConnection()


def _connection() -> Connection:
    """This thread's autocommit connection for the assignment statements.

    Each statement is its own transaction: the miss path needs exactly one in the
    common case (the INSERT), so there is no BEGIN or COMMIT round trip. The
    connection stays checked out by the thread between requests, which spares the
    pool's checkout and its pre-ping round trip on every first-time user; one that
    has died (PostgreSQL restarted) is dropped by :func:`_on_held`, and the next
    statement checks out a fresh, pre-pinged one.
    """
    engine = db.get_engine()
    connection = _held.connection
    if connection is None or _held.engine is not engine or connection.closed or connection.invalidated:
        if connection is not None:
            _release_held()
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        _held.engine, _held.connection = engine, connection
    return connection


def _release_held(invalidate: bool = False) -> None:
    connection, _held.connection, _held.engine = _held.connection, None, None
    if connection is None:
        return
    try:
        if invalidate:
            connection.invalidate()
        connection.close()
    except Exception as exc:  # it is being thrown away
        log.debug("discarding a held connection: %s", exc)


def _on_held(statement: Callable[..., Any], *args: Any) -> Any:
    """Run ``statement(connection, *args)`` on this thread's held connection.

    A held connection that died since its last use fails here: it is discarded and
    the statement retried once on a fresh one (``INSERT … ON CONFLICT DO NOTHING`` and
    the SELECT are both safe to repeat). Driver errors of a lost connection surface
    as SQLAlchemy's, so callers handle one family.
    """
    for attempt in (0, 1):
        try:
            return statement(_connection(), *args)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            _release_held(invalidate=True)
            if attempt:
                raise sa_exc.OperationalError(getattr(statement, "__name__", "statement"), None, exc) from exc
            log.warning("held PostgreSQL connection lost, retrying on a fresh one: %s", exc)
    raise AssertionError("unreachable")


def _choose(definition: Definition, molam_id: str, raw_weights: bytes | None) -> tuple[VariantDefinition, float, int]:
    """(variant, probability it had of being chosen, allocation period)."""
    if definition.mode == ExperimentMode.BANDIT.value:
        weights, weights_period = draw_weights(definition, _published_weights(raw_weights, definition.id))
        variant = weights[draw_arm([w for _, w in weights], random.random)][0]
        total = sum(w for _, w in weights)
        probability = next(w for v, w in weights if v is variant) / total
        return variant, probability, period_id(definition.version, weights_period)
    variant = variant_for_bucket(definition, split_bucket(definition.id, molam_id))
    return variant, split_probability(definition, variant), period_id(definition.version, 0)


def _published_weights(raw: bytes | None, experiment_id: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        published = json.loads(raw)
    except ValueError:
        log.warning("ignoring malformed bandit weights for %s", experiment_id)
        return None
    return published if isinstance(published, dict) else None


def _driver(connection: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under SQLAlchemy's (its cursors are context managers)."""
    return cast("psycopg.Connection[Any]", connection.connection.driver_connection)


def _insert(
    connection: Connection, experiment_id: str, variant_id: str, user: UserContext, period: int, probability: float
) -> tuple[Any, datetime] | None:
    # Run on the driver's cursor (SQLAlchemy's result machinery costs more than the statement).
    # In autocommit the row is committed when the statement returns, so Redis never
    # holds an assignment that PostgreSQL could still roll back.
    with _driver(connection).cursor() as cursor:
        row = cursor.execute(
            _INSERT_ASSIGNMENT,
            {
                "experiment_id": experiment_id,
                "variant_id": variant_id,
                "molam_id": user.molam_id,
                "country": user.country,
                "lang": user.lang,
                "currency": user.currency,
                "region": user.region,
                "device": user.device,
                "period": period,
                "probability": probability,
                "txn_count": user.txn_count,
                "pre_exposure_value": user.pre_exposure_value,
                "running": ExperimentStatus.RUNNING.value,
            },
        ).fetchone()
    return None if row is None else (row[0], row[1])


def _record_holdout_member(connection: Connection, experiment_id: str, molam_id: str, holdout_ids: list[str]) -> None:
    """Record the user in each holdout (first asker wins; safe to repeat)."""
    with _driver(connection).cursor() as cursor:
        cursor.execute(
            _INSERT_HOLDOUT_MEMBERS, {"holdout_ids": holdout_ids, "molam_id": molam_id, "experiment_id": experiment_id}
        )


def _cache_holdout_member(client: redis.Redis | None, experiment_id: str, molam_id: str, holdout_ids: list[str]) -> None:
    """The answer, cached in the assignment key, so a returning member costs one round trip."""
    if client is None:
        return
    payload = json.dumps({"holdout_ids": holdout_ids}, separators=(",", ":"))
    try:
        client.execute_command("SET", assignment_key(experiment_id, molam_id), payload, "EX", ASSIGNMENT_TTL_S)
    except redis.RedisError as exc:
        mark_redis_down(client, exc)


def _existing(connection: Connection, experiment_id: str, molam_id: str) -> tuple[Any, datetime] | None:
    with _driver(connection).cursor() as cursor:
        row = cursor.execute(_SELECT_ASSIGNMENT, {"experiment_id": experiment_id, "molam_id": molam_id}).fetchone()
    return None if row is None else (row[0], row[1])


def _resolve_row(
    client: redis.Redis | None, definition: Definition, molam_id: str, row: tuple[Any, datetime]
) -> tuple[Definition, VariantDefinition, str]:
    """The stored row's variant (re-reading a definition that lacks it), cached for next time."""
    variant_id, assigned_at = str(row[0]), _iso(row[1])
    variant = definition.by_id.get(variant_id)
    if variant is None:
        # The stored variant is not in this copy of the definition: read a fresh one.
        definition = load_definition(definition.id, client)
        variant = definition.by_id[variant_id]
    _cache_assignment(client, definition.id, molam_id, variant_id, assigned_at)
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
    cached = _read_cached(client, experiment_id, molam_id, budget)
    client = cached.client
    definition = _definition(client, experiment_id, cached.definition)
    require_permitted(definition, caller_roles)
    held = _cached_variant(definition, cached.assignment)
    if held is not None:
        return _stored(definition, molam_id, held[0], held[1])
    try:
        row = _on_held(_existing, experiment_id, molam_id)
    except _DATABASE_DOWN as exc:
        raise Unavailable("PostgreSQL is unreachable and this assignment is not cached; retry shortly", retry_after=DATABASE_RETRY_AFTER_S) from exc
    if row is None:
        raise NotFound(f"{molam_id!r} has no assignment in experiment {experiment_id}")
    definition, variant, assigned_at = _resolve_row(client, definition, molam_id, row)
    return _stored(definition, molam_id, variant, assigned_at)

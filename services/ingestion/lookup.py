"""Whose event is it: the user's variant for a tracked event, and who may send it.

:func:`lookup` reads the user's assignment (Redis first, PostgreSQL on a miss, holdout
membership included) and :func:`check_assignment` applies the rules to a staged event:
the user must be assigned, the variant must match, the experiment must not be
archived, and the calling service must be allowed on it. The track path's Lua script
(:mod:`services.ingestion.staging`) only short-cuts these rules for cached users.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from core import rbac
from core.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from models.enums import ExperimentStatus

from ..cache import STREAM_GROUP as GROUP  # noqa: F401 - GROUP re-exported
from ..cache import assignment_key, definition_key
from ..experiments import definitions
from ..ratelimit import Budget, read_with_budget
from .records import StagedEvent, parse_uuid

log = logging.getLogger(__name__)

ASSIGNMENT_CACHE_TTL_S = 7 * 24 * 3600  # as services.experiments.assignment caches it


class _DefinitionFacts(NamedTuple):
    status: str | None
    allowed_services: frozenset[str] | None


_facts_by_definition: dict[bytes, _DefinitionFacts] = {}
_NO_FACTS = _DefinitionFacts(None, None)


def _facts_from_definition(raw: bytes) -> _DefinitionFacts:
    """The ``status`` and ``allowed_services`` of a cached definition document, memoised on its bytes."""
    facts = _facts_by_definition.get(raw)
    if facts is None:
        try:
            document = json.loads(raw)
            facts = _DefinitionFacts(document.get("status"), definitions.allowed_services_of(document))
        except (ValueError, AttributeError, TypeError):
            facts = _NO_FACTS
        if len(_facts_by_definition) > 512:
            _facts_by_definition.clear()
        _facts_by_definition[raw] = facts
    return facts


def _variant_from_assignment(raw: bytes) -> str | None:
    """The cached variant, or ``None`` (a miss) when the document is not what we expect."""
    try:
        return parse_uuid(json.loads(raw)["variant_id"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Lookup:
    """Experiment statuses (``None`` = unknown experiment) and held variants (``None`` = unassigned).

    ``allowed`` holds each known experiment's ``allowed_services`` (absent or None: every service).
    """

    statuses: dict[str, str | None]
    variants: dict[tuple[str, str], str | None]
    allowed: dict[str, frozenset[str] | None] = field(default_factory=dict)


def lookup(
    client: redis.Redis,
    session_factory: Callable[[], Session],
    pairs: Iterable[tuple[str, str]],
    budget: Budget | None = None,
) -> Lookup:
    """Resolve statuses and assignments with one MGET; PostgreSQL only for what Redis lacks.

    The same round trip spends ``budget`` (:func:`services.ratelimit.read_with_budget`;
    :class:`RateLimited` past it, nothing read). Raises :class:`core.errors.Unavailable`
    when Redis cannot be reached: the event could not be staged anyway, so there is no
    point in going to PostgreSQL.
    """
    pairs = list(dict.fromkeys(pairs))
    experiments = list(dict.fromkeys(experiment_id for experiment_id, _ in pairs))
    keys = [definition_key(e) for e in experiments] + [assignment_key(e, m) for e, m in pairs]
    try:
        values = read_with_budget(client, budget, keys)
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the event was not accepted ({exc})", retry_after=2) from exc
    statuses: dict[str, str | None] = {}
    allowed: dict[str, frozenset[str] | None] = {}
    missing_experiments: list[str] = []
    for experiment_id, raw in zip(experiments, values):
        facts = _facts_from_definition(raw) if raw is not None else _NO_FACTS
        if facts.status is None:
            missing_experiments.append(experiment_id)
        else:
            statuses[experiment_id] = facts.status
            allowed[experiment_id] = facts.allowed_services
    variants: dict[tuple[str, str], str | None] = {}
    missing_pairs: list[tuple[str, str]] = []
    for pair, raw in zip(pairs, values[len(experiments):]):
        variant = _variant_from_assignment(raw) if raw is not None else None
        if variant is None:
            missing_pairs.append(pair)
        else:
            variants[pair] = variant
    if missing_experiments or missing_pairs:
        _lookup_postgres(client, session_factory(), missing_experiments, missing_pairs, statuses, variants, allowed)
    return Lookup(statuses, variants, allowed)


def _lookup_postgres(
    client: redis.Redis,
    session: Session,
    experiments: list[str],
    pairs: list[tuple[str, str]],
    statuses: dict[str, str | None],
    variants: dict[tuple[str, str], str | None],
    allowed: dict[str, frozenset[str] | None],
) -> None:
    # A definition miss goes through the assignment path's loader, which also re-caches
    # ``exp:def:{id}`` (safely against concurrent mutations): track traffic alone keeps it warm.
    for experiment_id in experiments:
        try:
            definition = definitions.load_definition(experiment_id, client)
        except NotFound:
            statuses[experiment_id] = None
        else:
            statuses[experiment_id] = definition.status
            allowed[experiment_id] = definition.allowed_services
    if not pairs:
        return
    rows = session.execute(
        text(
            "SELECT a.experiment_id::text, a.molam_id, a.variant_id::text, a.assigned_at "
            "FROM experiment_assignments a "
            "JOIN unnest(CAST(:experiments AS uuid[]), CAST(:molams AS text[])) AS k(experiment_id, molam_id) "
            "ON a.experiment_id = k.experiment_id AND a.molam_id = k.molam_id"
        ),
        {"experiments": [e for e, _ in pairs], "molams": [m for _, m in pairs]},
    ).all()
    cache_entries: dict[str, str] = {}
    for experiment_id, molam_id, variant_id, assigned_at in rows:
        variants[(experiment_id, molam_id)] = variant_id
        cache_entries[assignment_key(experiment_id, molam_id)] = json.dumps(
            {"variant_id": variant_id, "assigned_at": assigned_at.isoformat()}, separators=(",", ":")
        )
    for pair in pairs:
        variants.setdefault(pair, None)
    if cache_entries:
        try:
            with client.pipeline(transaction=False) as pipe:
                for key, value in cache_entries.items():
                    pipe.set(key, value, ex=ASSIGNMENT_CACHE_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:  # only a cache: the next event reads PostgreSQL again
            log.warning("could not cache assignments: %s", exc)


def check_assignment(record: StagedEvent, found: Lookup, caller_roles: tuple[str, ...] | None = None) -> StagedEvent:
    """The record with its ``variant_id`` filled in from the assignment, if the event may be staged.

    Raises the refusing :class:`DomainError` otherwise: 404 (unknown experiment), 403
    (the experiment's ``allowed_services`` leave ``caller_roles`` out), 409 (archived) or
    422 naming the field (no assignment, or another variant than the user's).
    """
    experiment_id, molam_id = record.experiment_id, record.molam_id
    status = found.statuses.get(experiment_id)
    if status is None:
        raise NotFound(
            f"experiment {experiment_id} not found", errors={"json": {"experiment_id": ["experiment not found"]}}
        )
    if caller_roles is not None and not rbac.service_permitted(found.allowed.get(experiment_id), caller_roles):
        raise Forbidden(
            f"experiment {experiment_id} does not allow the service role(s) {', '.join(caller_roles)}",
            errors={"json": {"experiment_id": ["this service may not track on the experiment"]}},
        )
    if status == ExperimentStatus.ARCHIVED.value:
        raise Conflict(
            f"experiment {experiment_id} is archived", errors={"json": {"experiment_id": ["experiment is archived"]}}
        )
    held = found.variants.get((experiment_id, molam_id))
    if held is None:
        raise Invalid(
            "the user holds no assignment in this experiment",
            errors={"json": {"molam_id": [f"{molam_id!r} holds no assignment in experiment {experiment_id}"]}},
        )
    if record.variant_id is None:
        return record._replace(variant_id=held)
    if record.variant_id != held:
        raise Invalid(
            "variant_id does not match the user's assignment",
            errors={"json": {"variant_id": [f"the user is assigned to variant {held}, not {record.variant_id}"]}},
        )
    return record

"""The experiment definition as the hot paths see it, and its Redis cache.

The API's assignment path (and ingestion) need only a small, stable slice of an
experiment: status, mode, coverage, targeting and the variants. That slice is the
JSON document stored under ``exp:def:{id}`` (see :mod:`services.cache` and the
Redis key contract in the notes). It is written here on a cache miss with a short
TTL and deleted by every mutation (``api.experiments.commit_mutation``).

Parsing the same bytes on every request would cost more than the Redis round trip
that fetched them, so parsed definitions are memoised by their exact bytes: a
changed definition is different bytes and therefore a fresh parse.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import select

from core import db, rbac
from core.errors import NotFound
from models import Experiment
from models.enums import ExperimentStatus
from sira.bandit import BanditConfig

from ..cache import definition_key

log = logging.getLogger(__name__)

# Mutations delete the key, so the TTL only bounds how long an orphaned copy can live.
DEFINITION_TTL_S = 60
_PARSED_CACHE_LIMIT = 512


@dataclass(frozen=True, slots=True)
class VariantDefinition:
    id: str
    name: str
    config: dict[str, Any]
    is_control: bool
    traffic_share: float
    paused: bool


@dataclass(frozen=True)
class Definition:
    id: str
    status: str
    mode: str
    coverage: float
    primary_metric: str
    targeting: dict[str, Any]
    version: int
    bandit: dict[str, Any]
    variants: tuple[VariantDefinition, ...]
    by_id: dict[str, VariantDefinition] = field(repr=False, compare=False)
    # Lazily filled by services.experiments.assignment (split boundaries per definition version).
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Mutual exclusion: the layer and the bucket range [start, end) the experiment owns in it.
    layer_id: str | None = None
    layer_range: tuple[int, int] | None = None
    # Long-term holdouts: (holdout id, percent) pairs.
    holdouts: tuple[tuple[str, float], ...] = ()
    # Service roles that may assign and track (None: every one); see core.rbac.service_permitted.
    allowed_services: frozenset[str] | None = None

    def permits(self, roles: tuple[str, ...]) -> bool:
        return rbac.service_permitted(self.allowed_services, roles)

    @property
    def is_running(self) -> bool:
        return self.status == ExperimentStatus.RUNNING.value

    @property
    def active_variants(self) -> tuple[VariantDefinition, ...]:
        return tuple(v for v in self.variants if not v.paused)


def definition_document(experiment: Experiment) -> dict[str, Any]:
    """The JSON document cached under ``exp:def:{id}`` (the shared Redis contract)."""
    return {
        "id": str(experiment.id),
        "status": experiment.status,
        "mode": experiment.mode,
        "coverage": float(experiment.coverage),
        "primary_metric": experiment.primary_metric,
        "targeting": experiment.targeting or {},
        "version": experiment.version,
        "bandit": {
            "min_samples": (experiment.bandit or {}).get("min_samples", BanditConfig.min_samples),
            "floor": (experiment.bandit or {}).get("floor", BanditConfig.floor),
        },
        "variants": [
            {
                "id": str(v.id),
                "name": v.name,
                "config": v.config or {},
                "is_control": v.is_control,
                "traffic_share": float(v.traffic_share),
                "paused": v.paused,
            }
            for v in experiment.variants
        ],
        "layer": (
            {"id": str(experiment.layer_id), "start": experiment.layer_range_start, "end": experiment.layer_range_end}
            if experiment.layer_id is not None
            else None
        ),
        "holdouts": [{"id": str(h.id), "percent": float(h.percent)} for h in experiment.holdouts],
        "allowed_services": sorted(experiment.allowed_services) if experiment.allowed_services is not None else None,
    }


def definition_from_document(document: dict[str, Any]) -> Definition:
    variants = tuple(
        VariantDefinition(
            id=v["id"],
            name=v["name"],
            config=v.get("config") or {},
            is_control=bool(v.get("is_control")),
            traffic_share=float(v["traffic_share"]),
            paused=bool(v.get("paused")),
        )
        for v in document["variants"]
    )
    return Definition(
        id=document["id"],
        status=document["status"],
        mode=document["mode"],
        coverage=float(document["coverage"]),
        primary_metric=document.get("primary_metric", "conversion"),
        targeting=document.get("targeting") or {},
        version=int(document.get("version", 1)),
        bandit=document.get("bandit") or {},
        variants=variants,
        by_id={v.id: v for v in variants},
        **_design_fields(document),
    )


def _design_fields(document: dict[str, Any]) -> dict[str, Any]:
    layer = document.get("layer")
    layer_range = None
    if layer and layer.get("start") is not None:
        layer_range = (int(layer["start"]), int(layer["end"]))
    return {
        "layer_id": layer["id"] if layer else None,
        "layer_range": layer_range,
        "holdouts": tuple((h["id"], float(h["percent"])) for h in document.get("holdouts") or ()),
        "allowed_services": allowed_services_of(document),
    }


def allowed_services_of(document: dict[str, Any]) -> frozenset[str] | None:
    """The document's ``allowed_services`` (absent or null: every service)."""
    allowed = document.get("allowed_services")
    return None if allowed is None else frozenset(allowed)


_parsed: dict[bytes, Definition] = {}


def parse_definition(raw: bytes) -> Definition:
    """Parse cached bytes, memoised on the bytes themselves (see module docstring)."""
    definition = _parsed.get(raw)
    if definition is None:
        definition = definition_from_document(json.loads(raw))
        if len(_parsed) >= _PARSED_CACHE_LIMIT:
            _parsed.clear()
        _parsed[raw] = definition
    return definition


def encode_definition(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def load_definition(experiment_id: uuid.UUID | str, client: redis.Redis | None = None) -> Definition:
    """Read the definition from PostgreSQL and, when ``client`` is given, cache it in Redis.

    The experiment row is read ``FOR KEY SHARE`` and the lock is held until the copy
    is in Redis. Every mutation takes ``FOR UPDATE`` on that row, deletes the key,
    commits and deletes it again, so a copy written here is either the committed new
    state or is written before the mutation's deletes: a stop that has returned is
    never undone by an assign that read the row just before it. The read runs in its
    own short session so that the lock never outlives the cache write and the
    caller's transaction is left alone.
    """
    session = db.new_session()
    try:
        query = select(Experiment).where(Experiment.id == experiment_id)
        if client is not None:
            query = query.with_for_update(read=True, key_share=True)
        experiment = session.execute(query).scalar_one_or_none()
        if experiment is None:
            raise NotFound(f"experiment {experiment_id} not found")
        raw = encode_definition(definition_document(experiment))
        if client is not None:
            try:
                client.execute_command("SET", definition_key(experiment_id), raw, "EX", DEFINITION_TTL_S)
            except redis.RedisError as exc:
                log.warning("could not cache definition of %s: %s", experiment_id, exc)
    finally:
        session.rollback()
        session.close()
    return parse_definition(raw)


def get_definition(client: redis.Redis | None, experiment_id: uuid.UUID | str) -> Definition:
    """The definition from Redis, else from PostgreSQL (cached on the way when Redis answers).

    ``client=None`` means Redis is known to be down: go straight to PostgreSQL.
    """
    if client is not None:
        try:
            raw = client.get(definition_key(experiment_id))
        except redis.RedisError as exc:
            log.warning("Redis unavailable reading definition of %s: %s", experiment_id, exc)
            client = None
        else:
            if raw is not None:
                return parse_definition(raw)
    return load_definition(experiment_id, client)

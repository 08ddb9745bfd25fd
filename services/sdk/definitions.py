"""The evaluation data SDK clients download: every running experiment, one document.

``GET /api/sdk/definitions`` serves the bytes built here with a strong ETag (a hash
of the bytes, so two processes building the same state agree on it). Building reads
PostgreSQL (running experiments, their variants, their pause history) and Redis (the
bandit weights SIRA published); it is done once per change, not once per request:

* ``sdk:defs:version`` is replaced by a new random token
  (``services.cache.announce_definitions_change``) after the commit of every change
  that alters the document;
* the last snapshot is kept in Redis under ``sdk:defs:snapshot`` together with the
  version it was built for, and in each process; a snapshot whose version is no
  longer current is rebuilt. A builder reads the version *before* PostgreSQL, so a
  snapshot can only be labelled with a version older than the state it shows, never
  newer: a change committed after the read is always followed by a bump that
  invalidates it.
* a snapshot is also rebuilt once older than ``SNAPSHOT_MAX_AGE_S``, which bounds how
  long a missed bump (Redis unreachable just after a commit) or an expired weights key
  can go unnoticed.

Local evaluation is exact only where no stored assignment can differ from what the
hash gives today. Under a fixed split the stored assignment differs from today's
split only for users assigned under another set of paused arms (renormalisation moves
every boundary, not only the paused arm's slice), so each experiment carries
``server_buckets``: the split buckets where any pause configuration it has run under
(read from its audit log) maps to another arm than the current one. Clients send users
in those buckets to ``POST /assign``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from core import db, rbac
from core import redis as redis_state
from models.enums import ExperimentMode, ExperimentStatus

from .. import cache
from ..experiments import assignment
from ..experiments.assignment import split_boundaries
from ..experiments.buckets import BUCKETS
from ..experiments.definitions import Definition, definition_from_document

log = logging.getLogger(__name__)

# The document's own format; clients refuse a format they do not know.
FORMAT = 1
SNAPSHOT_MAX_AGE_S = 30.0
# With Redis unreachable there is no version to compare: rebuild at most this often.
UNVERSIONED_MAX_AGE_S = 5.0
# A larger pause history than this sends the whole experiment to the server rather
# than enumerating every configuration's boundaries.
MAX_PAUSE_CONFIGURATIONS = 64

_PAUSE_HISTORY = text(
    "SELECT experiment_id, after FROM experiment_audit_logs "
    "WHERE experiment_id = ANY(:experiment_ids) AND action IN ('pause_variant', 'resume_variant') "
    "ORDER BY id"
).bindparams(bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))))


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str | None
    etag: str
    body: bytes
    built_at: float

    @property
    def header_etag(self) -> str:
        """The strong ETag as sent in the header (quoted)."""
        return f'"{self.etag}"'


# --- the document --------------------------------------------------------------------


def _mapping(definition: Definition, paused: frozenset[str]) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
    """Split bounds and arm ids under a given set of paused arms (None: no active arm)."""
    document = {
        "id": definition.id, "status": definition.status, "mode": definition.mode, "coverage": definition.coverage,
        "targeting": definition.targeting, "version": definition.version, "bandit": definition.bandit,
        "variants": [
            {"id": v.id, "name": v.name, "config": v.config, "is_control": v.is_control,
             "traffic_share": v.traffic_share, "paused": v.id in paused}
            for v in definition.variants
        ],
    }
    variant = definition_from_document(document)
    if not variant.active_variants:
        return None
    bounds, active = split_boundaries(variant)
    return bounds, tuple(v.id for v in active)


def _arm_at(mapping: tuple[tuple[int, ...], tuple[str, ...]], bucket: int) -> str:
    import bisect

    bounds, ids = mapping
    return ids[bisect.bisect_right(bounds, bucket)]


def server_buckets(definition: Definition, configurations: set[frozenset[str]]) -> list[list[int]] | None:
    """Half-open bucket ranges where a past pause configuration disagrees with today's split.

    ``configurations`` are the sets of paused arm ids the experiment has had (today's
    included). None means "too many to enumerate: send everyone to the server".
    """
    current_paused = frozenset(v.id for v in definition.variants if v.paused)
    others = {c for c in configurations if c != current_paused}
    if not others:
        return []
    if len(others) > MAX_PAUSE_CONFIGURATIONS:
        return None
    current = _mapping(definition, current_paused)
    if current is None:  # no unpaused arm: nothing is assigned at all
        return []
    mappings = [m for m in (_mapping(definition, c) for c in others) if m is not None]
    # Between two consecutive boundaries (of any configuration) every mapping is constant.
    points = sorted({0, BUCKETS, *current[0], *(b for m in mappings for b in m[0])})
    ranges: list[list[int]] = []
    for low, high in zip(points, points[1:]):
        if low >= high:
            continue
        today = _arm_at(current, low)
        if any(_arm_at(m, low) != today for m in mappings):
            if ranges and ranges[-1][1] == low:
                ranges[-1][1] = high
            else:
                ranges.append([low, high])
    return ranges


def experiment_document(
    cached: dict[str, Any], configurations: set[frozenset[str]], published: dict[str, Any] | None
) -> dict[str, Any]:
    """One experiment as clients see it, from its cached definition document (docs/sdk.md)."""
    is_bandit = cached["mode"] == ExperimentMode.BANDIT.value
    # Layer ranges and holdout membership are decided by the server (the user may belong to
    # another experiment of the layer, or be recorded as a holdout member).
    layer, holdouts = cached.get("layer"), cached.get("holdouts") or []
    current = frozenset(v["id"] for v in cached["variants"] if v["paused"])
    buckets: list[list[int]] | None = []
    if not is_bandit and configurations - {current}:
        buckets = server_buckets(definition_from_document(cached), configurations | {current})
    weights = None
    if is_bandit and published:
        raw = published.get("weights")
        weights = {
            "weights": {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {},
            "burn_in": bool(published.get("burn_in")),
        }
    return {
        "id": cached["id"],
        "version": int(cached["version"]),
        "status": cached["status"],
        "mode": cached["mode"],
        # "local": fixed split the client evaluates; "server": ask POST /assign for everyone.
        "evaluation": "server" if is_bandit or buckets is None or layer or holdouts else "local",
        "coverage": float(cached["coverage"]),
        "targeting": cached.get("targeting") or {},
        "variants": [
            {
                "id": v["id"], "name": v["name"], "is_control": bool(v["is_control"]), "config": v.get("config") or {},
                "share": float(v["traffic_share"]), "paused": bool(v["paused"]),
            }
            for v in cached["variants"]
        ],
        "server_buckets": buckets or [],
        "bandit_weights": weights,
        "layer": {"id": layer["id"]} if layer else None,
        "holdouts": [{"id": h["id"]} for h in holdouts],
        # Null: every service. The server already leaves out what the caller may not use
        # (caller_view); the field says why an experiment is missing from another's view.
        "allowed_services": cached.get("allowed_services"),
    }


def _pause_configurations(session: Session, experiment_ids: list[uuid.UUID]) -> dict[str, set[frozenset[str]]]:
    configurations: dict[str, set[frozenset[str]]] = {}
    if not experiment_ids:
        return configurations
    for experiment_id, after in session.execute(_PAUSE_HISTORY, {"experiment_ids": experiment_ids}):
        paused = frozenset(str(v["id"]) for v in (after or {}).get("variants", []) if v.get("paused"))
        # Arms start unpaused: the first pause means the experiment also ran with none.
        configurations.setdefault(str(experiment_id), {frozenset()}).add(paused)
    return configurations


def _published_weights(client: redis.Redis | None, experiment_ids: list[str]) -> dict[str, dict[str, Any]]:
    if client is None or not experiment_ids:
        return {}
    try:
        raw_values = client.mget([cache.weights_key(i) for i in experiment_ids])
    except redis.RedisError as exc:
        log.warning("bandit weights unavailable for the SDK snapshot: %s", exc)
        return {}
    published = {}
    for experiment_id, raw in zip(experiment_ids, raw_values):
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            published[experiment_id] = value
    return published


# The fields of the cached definition document (``definition_document``) that evaluation
# needs, read in one statement: loading a thousand experiments and their arms through the
# ORM costs several times the query itself. tests/api/test_sdk_definitions.py checks that
# these documents equal ``definition_document``'s on every field used.
_RUNNING = text(
    """
    SELECT e.id::text, e.status, e.mode, e.coverage, e.targeting, e.version,
           e.layer_id::text AS layer_id, e.allowed_services,
           ARRAY(SELECT h.holdout_id::text FROM experiment_holdout_links h
                 WHERE h.experiment_id = e.id ORDER BY h.holdout_id) AS holdout_ids,
           json_agg(json_build_object(
               'id', v.id::text, 'name', v.name, 'config', v.config, 'is_control', v.is_control,
               'traffic_share', v.traffic_share, 'paused', v.paused
           ) ORDER BY v.position, v.created_at, v.id) AS variants
    FROM experiments e JOIN experiment_variants v ON v.experiment_id = e.id
    WHERE e.status = :running
    GROUP BY e.id
    ORDER BY e.id
    """
)


def running_definition_documents(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(_RUNNING, {"running": ExperimentStatus.RUNNING.value}).all()
    return [
        {
            "id": experiment_id, "status": status, "mode": mode, "coverage": float(coverage),
            "targeting": targeting or {}, "version": version,
            "variants": [{**v, "config": v["config"] or {}, "traffic_share": float(v["traffic_share"])} for v in variants],
            "layer": {"id": layer_id} if layer_id else None,
            "holdouts": [{"id": h} for h in holdout_ids or []],
            "allowed_services": sorted(allowed) if allowed is not None else None,
        }
        for experiment_id, status, mode, coverage, targeting, version, layer_id, allowed, holdout_ids, variants in rows
    ]


def build_document(client: redis.Redis | None) -> dict[str, Any]:
    session = db.new_session()
    try:
        documents = running_definition_documents(session)
        configurations = _pause_configurations(session, [uuid.UUID(d["id"]) for d in documents])
    finally:
        session.rollback()
        session.close()
    bandits = [d["id"] for d in documents if d["mode"] == ExperimentMode.BANDIT.value]
    published = _published_weights(client, bandits)
    return {
        "format": FORMAT,
        "buckets": BUCKETS,
        "experiments": [
            experiment_document(d, configurations.get(d["id"], set()), published.get(d["id"])) for d in documents
        ],
    }


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def etag_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


# --- snapshots: one build per change ---------------------------------------------------

_local: Snapshot | None = None
_local_lock = threading.Lock()


def _read_version(client: redis.Redis | None) -> tuple[str | None, bool]:
    """(current version token, Redis answered). A missing token (Redis flushed or
    restarted) is replaced by a new one, agreed on by every process through SET NX."""
    # The assignment path's circuit breaker: after a failure, skip Redis for a while
    # instead of paying a connection timeout on every request.
    client = redis_state.usable(client)
    if client is None:
        return None, False
    try:
        raw = client.get(cache.SDK_DEFINITIONS_VERSION_KEY)
        if raw is None:
            client.set(cache.SDK_DEFINITIONS_VERSION_KEY, cache.new_definitions_version(), nx=True)
            raw = client.get(cache.SDK_DEFINITIONS_VERSION_KEY)
    except redis.RedisError as exc:
        assignment.mark_redis_down(client, exc)
        return None, False
    if raw is None:
        return None, False
    return raw.decode(), True


def _fresh(snapshot: Snapshot | None, version: str | None, now: float) -> bool:
    return (
        snapshot is not None
        and version is not None
        and snapshot.version == version
        and now - snapshot.built_at < SNAPSHOT_MAX_AGE_S
    )


def _from_redis(client: redis.Redis, version: str, now: float) -> Snapshot | None:
    try:
        raw = client.get(cache.SDK_DEFINITIONS_SNAPSHOT_KEY)
    except redis.RedisError:
        return None
    if not raw:
        return None
    try:
        header, body = raw.split(b"\n", 1)
        stored_version, etag, built_at = header.decode().split(" ")
        snapshot = Snapshot(stored_version, etag, body, float(built_at))
    except ValueError:
        return None
    # built_at is wall-clock time from whichever process built it.
    age = time.time() - snapshot.built_at
    if snapshot.version != version or age >= SNAPSHOT_MAX_AGE_S or etag_of(body) != etag:
        return None
    return Snapshot(version, etag, body, now - max(age, 0.0))


def current_snapshot(client: redis.Redis | None) -> Snapshot:
    """The snapshot for the current version: this process's, Redis's, or a new build.

    One Redis GET when this process already holds the current snapshot.
    """
    global _local
    now = time.monotonic()
    version, answered = _read_version(client)
    redis_client = client if answered else None
    snapshot = _local
    if snapshot is not None and _fresh(snapshot, version, now):
        return snapshot
    if not answered and snapshot is not None and snapshot.version is None and now - snapshot.built_at < UNVERSIONED_MAX_AGE_S:
        return snapshot
    with _local_lock:
        snapshot = _local
        if snapshot is not None and _fresh(snapshot, version, now):
            return snapshot
        if redis_client is not None and version is not None:
            snapshot = _from_redis(redis_client, version, now)
            if snapshot is not None:
                _local = snapshot
                return snapshot
        body = encode(build_document(redis_client))
        snapshot = Snapshot(version, etag_of(body), body, time.monotonic())
        if redis_client is not None:
            try:
                header = f"{version} {snapshot.etag} {time.time():.3f}\n".encode()
                redis_client.set(cache.SDK_DEFINITIONS_SNAPSHOT_KEY, header + body, ex=int(SNAPSHOT_MAX_AGE_S) * 2)
            except redis.RedisError as exc:
                log.warning("could not cache the SDK snapshot: %s", exc)
        # Without a version (Redis down) the copy is kept for UNVERSIONED_MAX_AGE_S only.
        _local = snapshot
        return snapshot


# --- per-caller views: the snapshot without what the caller may not assign -------------

_VIEW_CACHE_LIMIT = 256
_views: dict[tuple[str, tuple[str, ...]], Snapshot] = {}
_restricted: dict[str, bool] = {}
_views_lock = threading.Lock()


def caller_scope(roles: tuple[str, ...]) -> tuple[str, ...] | None:
    """The service roles a view is filtered for; None when the caller is not scoped (ops_admin)."""
    if any(not rbac.is_service_role(role) for role in roles):
        return None
    return tuple(sorted(set(roles)))


def caller_view(snapshot: Snapshot, roles: tuple[str, ...]) -> Snapshot:
    """The snapshot as the caller may see it: experiments whose ``allowed_services`` leave it out are dropped.

    The shared snapshot is built once per change; a filtered view is derived from it
    once per (snapshot, set of service roles) and memoised, with its own strong ETag
    (the hash of its own bytes). So a service's ETag changes exactly when what *it* may
    evaluate changes, two processes agree on it, and a caller never receives (nor can
    probe by ETag) another service's experiments. When no running experiment is
    restricted, every caller gets the shared snapshot itself.
    """
    scope = caller_scope(roles)
    if scope is None:
        return snapshot
    restricted = _restricted.get(snapshot.etag)
    if restricted is False:
        return snapshot
    key = (snapshot.etag, scope)
    view = _views.get(key)
    if view is not None:
        return view
    document = json.loads(snapshot.body)
    experiments = document.get("experiments") or []
    restricted = any(e.get("allowed_services") is not None for e in experiments)
    with _views_lock:
        if len(_restricted) >= _VIEW_CACHE_LIMIT:
            _restricted.clear()
        _restricted[snapshot.etag] = restricted
    if not restricted:
        return snapshot
    document["experiments"] = [e for e in experiments if rbac.service_permitted(e.get("allowed_services"), scope)]
    body = encode(document)
    view = Snapshot(snapshot.version, etag_of(body), body, snapshot.built_at)
    with _views_lock:
        if len(_views) >= _VIEW_CACHE_LIMIT:
            _views.clear()
        _views[key] = view
    return view


def forget_local_snapshot() -> None:
    """Drop this process's copy (tests that rebuild the database under a live app)."""
    global _local
    with _local_lock:
        _local = None

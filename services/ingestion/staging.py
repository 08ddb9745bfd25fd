"""Metric ingestion: validate at the API, stage in a Redis Stream, write in batches.

This module is the API side; :mod:`services.ingestion.writer` is the write side.
The API never writes metric rows. It validates each event, checks the user's
assignment (Redis first, PostgreSQL on a miss) and appends the event to the
``ingest:events`` stream in one atomic Lua call. Celery drain tasks read the
stream through a consumer group and write raw events plus both rollup tables in
one PostgreSQL transaction per batch; stream entries are acknowledged (and
deleted) only after that transaction commits. Exactly-once counting rests on the
unique ``event_id``: a redelivered or retried event is skipped inside the
transaction, and rollups are computed from the rows actually inserted.

See ``docs/architecture.md`` ("Ingestion pipeline") for the measurements behind
the batch sizes and the drain schedule.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from core import redis as redis_state
from core.errors import Conflict, Invalid, NotFound, Unavailable
from core.metrics import EXPERIMENT_METRICS_ACCEPTED
from models.enums import ExperimentStatus

from ..cache import STREAM_GROUP as GROUP  # noqa: F401 - GROUP re-exported
from ..cache import STREAM_KEY, assignment_key, definition_key
from ..experiments import definitions, holdouts
from .records import (  # noqa: F401 - re-exported: the API side's view of the record contract
    BATCH_FIELDS,
    MAX_BATCH_REQUEST,
    MAX_EVENT_ID,
    MAX_METADATA_BYTES,
    MAX_MOLAM_ID,
    TRACK_FIELDS,
    StagedEvent,
    parse_uuid,
    validate_event,
)

log = logging.getLogger(__name__)

#: Events per stream entry. A batch request becomes ceil(n / 100) entries.
ENTRY_EVENTS = 100
#: Refuse new events (503) rather than let Redis run out of memory when nothing drains.
MAX_BACKLOG_ENTRIES = 500_000
ASSIGNMENT_CACHE_TTL_S = 7 * 24 * 3600  # as services.experiments.assignment caches it

# --------------------------------------------------------------------------- assignment lookup


_status_by_definition: dict[bytes, str | None] = {}


def _status_from_definition(raw: bytes) -> str | None:
    """The ``status`` of a cached definition document, memoised on its bytes."""
    status = _status_by_definition.get(raw, "")
    if status == "":
        try:
            status = json.loads(raw).get("status")
        except (ValueError, AttributeError):
            status = None
        if len(_status_by_definition) > 512:
            _status_by_definition.clear()
        _status_by_definition[raw] = status
    return status


def _variant_from_assignment(raw: bytes) -> str | None:
    """The cached variant, or ``None`` (a miss) when the document is not what we expect."""
    try:
        return parse_uuid(json.loads(raw)["variant_id"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Lookup:
    """Experiment statuses (``None`` = unknown experiment) and held variants (``None`` = unassigned)."""

    statuses: dict[str, str | None]
    variants: dict[tuple[str, str], str | None]


def lookup(client: redis.Redis, session_factory: Callable[[], Session], pairs: Iterable[tuple[str, str]]) -> Lookup:
    """Resolve statuses and assignments with one MGET; PostgreSQL only for what Redis lacks.

    Raises :class:`core.errors.Unavailable` when Redis cannot be reached: the event
    could not be staged anyway, so there is no point in going to PostgreSQL.
    """
    pairs = list(dict.fromkeys(pairs))
    experiments = list(dict.fromkeys(experiment_id for experiment_id, _ in pairs))
    keys = [definition_key(e) for e in experiments] + [assignment_key(e, m) for e, m in pairs]
    try:
        values = client.mget(keys)
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the event was not accepted ({exc})", retry_after=2) from exc
    statuses: dict[str, str | None] = {}
    missing_experiments: list[str] = []
    for experiment_id, raw in zip(experiments, values):
        status = _status_from_definition(raw) if raw is not None else None
        if status is None:
            missing_experiments.append(experiment_id)
        else:
            statuses[experiment_id] = status
    variants: dict[tuple[str, str], str | None] = {}
    missing_pairs: list[tuple[str, str]] = []
    for pair, raw in zip(pairs, values[len(experiments):]):
        variant = _variant_from_assignment(raw) if raw is not None else None
        if variant is None:
            missing_pairs.append(pair)
        else:
            variants[pair] = variant
    if missing_experiments or missing_pairs:
        _lookup_postgres(client, session_factory(), missing_experiments, missing_pairs, statuses, variants)
    return Lookup(statuses, variants)


def _lookup_postgres(
    client: redis.Redis,
    session: Session,
    experiments: list[str],
    pairs: list[tuple[str, str]],
    statuses: dict[str, str | None],
    variants: dict[tuple[str, str], str | None],
) -> None:
    # A definition miss goes through the assignment path's loader, which also re-caches
    # ``exp:def:{id}`` (safely against concurrent mutations): track traffic alone keeps it warm.
    for experiment_id in experiments:
        try:
            statuses[experiment_id] = definitions.load_definition(experiment_id, client).status
        except NotFound:
            statuses[experiment_id] = None
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


def check_assignment(record: StagedEvent, found: Lookup) -> StagedEvent:
    """The record with its ``variant_id`` filled in from the assignment, if the event may be staged.

    Raises the refusing :class:`DomainError` otherwise: 404 (unknown experiment), 409
    (archived) or 422 naming the field (no assignment, or another variant than the user's).
    """
    experiment_id, molam_id = record.experiment_id, record.molam_id
    status = found.statuses.get(experiment_id)
    if status is None:
        raise NotFound(
            f"experiment {experiment_id} not found", errors={"json": {"experiment_id": ["experiment not found"]}}
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


# --------------------------------------------------------------------------- staging

# Atomic: either every entry of the request is appended or none is (nothing half-written),
# and a stream that nobody drains refuses new events instead of eating Redis's memory.
# Each entry carries the request id of the API call that accepted it (field ``r``), so a
# batch the drain cannot write names the requests its events came from.
_ENQUEUE_LUA = """
local entries = (#ARGV - 2) / 2
if redis.call('XLEN', KEYS[1]) + entries > tonumber(ARGV[1]) then
  return -1  -- ENQUEUE_BACKLOG_FULL
end
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'n', ARGV[i], 'e', ARGV[i + 1], 'r', ARGV[2])
end
return entries
"""
#: The enqueue script's reply when the backlog cannot take the request's entries.
ENQUEUE_BACKLOG_FULL = -1


def stage(client: redis.Redis, records: Sequence[StagedEvent], request_id: str = "") -> None:
    """Append the records to the stream, ``ENTRY_EVENTS`` per entry, in one atomic call."""
    if not records:
        return
    script = redis_state.script(client, _ENQUEUE_LUA)
    args: list[Any] = [MAX_BACKLOG_ENTRIES, request_id]
    for start in range(0, len(records), ENTRY_EVENTS):
        chunk = records[start : start + ENTRY_EVENTS]
        args.append(len(chunk))
        args.append(json.dumps(chunk, separators=(",", ":"), ensure_ascii=False))
    try:
        appended = script(keys=[STREAM_KEY], args=args)
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the event was not accepted ({exc})", retry_after=2) from exc
    if appended == ENQUEUE_BACKLOG_FULL:
        raise Unavailable("the ingestion backlog is full; retry shortly", retry_after=5)


# --------------------------------------------------------------------------- single-event hot path

# One round trip for the common case of ``track``: read the cached definition and the
# user's cached assignment, check them, and append the event, atomically. Anything the
# cache cannot answer (a miss, an unreadable document) returns 0 and the caller takes
# the general path (:func:`lookup` with its PostgreSQL fallback, then :func:`stage`),
# so the rules live in :func:`check_assignment`; this script only short-cuts them.
_TRACK_LUA = """
local definition = redis.call('GET', KEYS[1])
local assignment = redis.call('GET', KEYS[2])
if not definition or not assignment then return {0} end
local ok, d = pcall(cjson.decode, definition)
if not ok or type(d) ~= 'table' or type(d['status']) ~= 'string' then return {0} end
local ok2, a = pcall(cjson.decode, assignment)
if not ok2 or type(a) ~= 'table' or type(a['variant_id']) ~= 'string' then return {0} end
local variant = a['variant_id']
if not string.match(variant, '^[0-9a-f-]+$') then return {0} end
if d['status'] == 'archived' or (ARGV[2] ~= '' and ARGV[2] ~= variant) then
  return {2, d['status'], variant}
end
if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[1]) then return {3} end
redis.call('XADD', KEYS[3], '*', 'n', 1, 'e', ARGV[3] .. variant .. ARGV[4], 'r', ARGV[5])
return {1, variant}
"""
#: Outcome codes of the track script (its reply's first element).
TRACK_CACHE_MISS, TRACK_STAGED, TRACK_REFUSED, TRACK_BACKLOG_FULL = 0, 1, 2, 3
_VARIANT = StagedEvent._fields.index("variant_id")


def accept_one(
    client: redis.Redis, session_factory: Callable[[], Session], record: StagedEvent, request_id: str = ""
) -> StagedEvent:
    """Check and stage one validated ``track`` event (usually one Redis round trip).

    Returns the staged record (its ``variant_id`` filled in), or the record with no
    ``variant_id`` when the user is a holdout member and the event was kept against the
    holdout instead. Raises the refusing :class:`DomainError` (404, 409, 422) or
    :class:`Unavailable`.
    """
    script = redis_state.script(client, _TRACK_LUA)
    experiment_id, molam_id = record.experiment_id, record.molam_id
    # The staged entry is ``[[event_id, experiment_id, "<variant>", ...]]``; the script
    # splices in the variant it read, so the record is serialised before it is known.
    head = "[" + json.dumps(record[:_VARIANT], separators=(",", ":"), ensure_ascii=False)[:-1] + ',"'
    tail = '",' + json.dumps(record[_VARIANT + 1 :], separators=(",", ":"), ensure_ascii=False)[1:] + "]"
    try:
        outcome = script(
            keys=[definition_key(experiment_id), assignment_key(experiment_id, molam_id), STREAM_KEY],
            args=[MAX_BACKLOG_ENTRIES, record.variant_id or "", head, tail, request_id],
        )
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the event was not accepted ({exc})", retry_after=2) from exc
    code = outcome[0]
    if code == TRACK_STAGED:
        return record._replace(variant_id=outcome[1].decode())
    if code == TRACK_REFUSED:
        # Raises: the cached status or variant refuses the event.
        check_assignment(
            record, Lookup({experiment_id: outcome[1].decode()}, {(experiment_id, molam_id): outcome[2].decode()})
        )
    if code == TRACK_BACKLOG_FULL:
        raise Unavailable("the ingestion backlog is full; retry shortly", retry_after=5)
    found = lookup(client, session_factory, [(experiment_id, molam_id)])
    try:
        record = check_assignment(record, found)
    except Invalid:
        if accept_for_holdout(session_factory, record, found):
            return record
        raise
    stage(client, [record], request_id)
    return record


def accept_for_holdout(session_factory: Callable[[], Session], record: StagedEvent, found: Lookup) -> bool:
    """Keep the event of an unassigned user who is a recorded holdout member of the experiment.

    Only for events without a ``variant_id`` (a member holds none) of a known, not
    archived experiment. The rare case, so it may cost PostgreSQL round trips; the
    event is committed to ``experiment_holdout_events`` here, not staged.
    """
    experiment_id, molam_id = record.experiment_id, record.molam_id
    status = found.statuses.get(experiment_id)
    if record.variant_id is not None or status is None or status == ExperimentStatus.ARCHIVED.value:
        return False
    if found.variants.get((experiment_id, molam_id)) is not None:
        return False
    session = session_factory()
    held = holdouts.member_holdouts(session, experiment_id, molam_id)
    if not held:
        return False
    holdouts.record_event(session, held, record)
    return True


# --------------------------------------------------------------------------- acceptance


def count_accepted(records: Iterable[StagedEvent]) -> None:
    """``experiment_metrics_accepted_total{experiment_id,event_type}``: events queued for ingestion.

    ``experiment_metrics_total`` counts them again once persisted (``writer``), so the
    difference is what is still queued plus duplicates and dead letters.
    """
    for (experiment_id, event_type), n in Counter((r.experiment_id, r.event_type) for r in records).items():
        EXPERIMENT_METRICS_ACCEPTED.labels(experiment_id=experiment_id, event_type=event_type).inc(n)


def now_utc() -> tuple[datetime, str]:
    moment = datetime.now(timezone.utc)
    return moment, moment.isoformat()

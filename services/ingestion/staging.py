"""Metric ingestion: validate at the API, stage in a Redis Stream, write in batches.

This module is the API side (whose event it is: :mod:`services.ingestion.lookup`); :mod:`services.ingestion.drain` and :mod:`services.ingestion.writer` are the write side.
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
from datetime import datetime, timezone
from typing import Any, NamedTuple

import redis
from sqlalchemy.orm import Session

from core import rbac
from core import redis as redis_state
from core.errors import BacklogShareExceeded, Forbidden, Invalid, Unavailable
from core.metrics import EXPERIMENT_METRICS_ACCEPTED
from models.enums import ExperimentStatus

from ..cache import STREAM_CALLER_ENTRIES_KEY, STREAM_KEY, assignment_key, definition_key
from ..cache import STREAM_GROUP as GROUP  # noqa: F401 - GROUP re-exported
from ..experiments import holdouts
from ..ratelimit import Budget, spend_budget_lua
from .lookup import (
    Lookup,
    check_assignment,
    lookup,
)
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


class Caller(NamedTuple):
    """Who stages events: the counter of their backlog share and the scope of their roles.

    ``roles=None`` is an internal call (not scoped by ``allowed_services``);
    ``backlog_share`` is the fraction of the backlog limit the caller's entries may
    occupy; ``budget`` is the request budget the staging call spends (None: none);
    ``backlog_limit`` is the backlog limit (``INGEST_MAX_BACKLOG_ENTRIES``; None:
    ``MAX_BACKLOG_ENTRIES``).
    """

    sub: str
    roles: tuple[str, ...] | None = None
    backlog_share: float = 1.0
    budget: Budget | None = None
    backlog_limit: int | None = None

    def max_backlog(self) -> int:
        """The stream entries the backlog may hold before everyone is refused (503)."""
        return self.backlog_limit if self.backlog_limit is not None else MAX_BACKLOG_ENTRIES

    def backlog_entries(self) -> int:
        """The most stream entries this caller may have waiting (at least one)."""
        return max(1, int(self.max_backlog() * self.backlog_share))


INTERNAL = Caller("")

# --------------------------------------------------------------------------- staging

# Atomic: either every entry of the request is appended or none is (nothing half-written),
# and a stream that nobody drains refuses new events instead of eating Redis's memory.
# Each entry carries the request id of the API call that accepted it (field ``r``), so a
# batch the drain cannot write names the requests its events came from.
#
# Each caller's entries are counted in the hash KEYS[2] (field: the caller, ARGV[3]) and
# the entry names its caller (field ``c``), so the drain gives the share back when it
# deletes the entry (``writer._acknowledge``); past ARGV[4] entries the caller is refused.
_ENQUEUE_LUA = """
local entries = (#ARGV - 4) / 2
local backlog = redis.call('XLEN', KEYS[1])
if backlog + entries > tonumber(ARGV[1]) then
  return -1  -- ENQUEUE_BACKLOG_FULL
end
if ARGV[3] ~= '' then
  -- No caller holds more than the stream holds (a trimmed or deleted stream must not refuse forever).
  local held = math.min(tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0'), backlog)
  if held + entries > tonumber(ARGV[4]) then return -2 end  -- ENQUEUE_SHARE_FULL
  if backlog == 0 then redis.call('DEL', KEYS[2]) end
  redis.call('HINCRBY', KEYS[2], ARGV[3], entries)
end
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'n', ARGV[i], 'e', ARGV[i + 1], 'r', ARGV[2], 'c', ARGV[3])
end
return entries
"""
#: The enqueue script's replies when the backlog, or the caller's share of it, cannot take the request's entries.
ENQUEUE_BACKLOG_FULL, ENQUEUE_SHARE_FULL = -1, -2
#: Retry-After (seconds) of a refusal for a full backlog or a full share of it.
BACKLOG_RETRY_AFTER_S = 5


def share_exceeded(caller: Caller) -> BacklogShareExceeded:
    return BacklogShareExceeded(
        f"this caller's share of the ingestion backlog ({caller.backlog_entries()} entries, "
        f"INGEST_SERVICE_SHARE={caller.backlog_share:g}) is full; retry once it drains",
        retry_after=BACKLOG_RETRY_AFTER_S,
    )


def stage(client: redis.Redis, records: Sequence[StagedEvent], request_id: str = "", caller: Caller = INTERNAL) -> None:
    """Append the records to the stream, ``ENTRY_EVENTS`` per entry, in one atomic call.

    Raises :class:`Unavailable` (503) when the backlog is full and
    :class:`BacklogShareExceeded` (429) when the caller's share of it is.
    """
    if not records:
        return
    script = redis_state.script(client, _ENQUEUE_LUA)
    args: list[Any] = [caller.max_backlog(), request_id, caller.sub, caller.backlog_entries()]
    for start in range(0, len(records), ENTRY_EVENTS):
        chunk = records[start : start + ENTRY_EVENTS]
        args.append(len(chunk))
        args.append(json.dumps(chunk, separators=(",", ":"), ensure_ascii=False))
    try:
        appended = script(keys=[STREAM_KEY, STREAM_CALLER_ENTRIES_KEY], args=args)
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the event was not accepted ({exc})", retry_after=2) from exc
    if appended == ENQUEUE_BACKLOG_FULL:
        raise Unavailable("the ingestion backlog is full; retry shortly", retry_after=BACKLOG_RETRY_AFTER_S)
    if appended == ENQUEUE_SHARE_FULL:
        raise share_exceeded(caller)


# --------------------------------------------------------------------------- single-event hot path

# One round trip for the common case of ``track``: read the cached definition and the
# user's cached assignment, check them, and append the event, atomically. Anything the
# cache cannot answer (a miss, an unreadable document) returns 0 and the caller takes
# the general path (:func:`lookup` with its PostgreSQL fallback, then :func:`stage`),
# so the rules live in :func:`check_assignment`; this script only short-cuts them.
_TRACK_LUA = spend_budget_lua("KEYS[4]", "ARGV[8]", "ARGV[9]", refused=5) + """local definition = redis.call('GET', KEYS[1])
local assignment = redis.call('GET', KEYS[2])
if not definition or not assignment then return {0} end
local ok, d = pcall(cjson.decode, definition)
if not ok or type(d) ~= 'table' or type(d['status']) ~= 'string' then return {0} end
local allowed = d['allowed_services']
if ARGV[10] ~= '*' and type(allowed) == 'table' then
  local permitted = false
  for role in string.gmatch(ARGV[10], '[^,]+') do
    for _, name in ipairs(allowed) do
      if name == role then permitted = true end
    end
  end
  if not permitted then return {4} end
end
local ok2, a = pcall(cjson.decode, assignment)
if not ok2 or type(a) ~= 'table' or type(a['variant_id']) ~= 'string' then return {0} end
local variant = a['variant_id']
if not string.match(variant, '^[0-9a-f-]+$') then return {0} end
if d['status'] == 'archived' or (ARGV[2] ~= '' and ARGV[2] ~= variant) then
  return {2, d['status'], variant}
end
local backlog = redis.call('XLEN', KEYS[3])
if backlog >= tonumber(ARGV[1]) then return {3} end
if ARGV[6] ~= '' then
  if math.min(tonumber(redis.call('HGET', KEYS[5], ARGV[6]) or '0'), backlog) >= tonumber(ARGV[7]) then return {6} end
  if backlog == 0 then redis.call('DEL', KEYS[5]) end
  redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
end
redis.call('XADD', KEYS[3], '*', 'n', 1, 'e', ARGV[3] .. variant .. ARGV[4], 'r', ARGV[5], 'c', ARGV[6])
return {1, variant}
"""
#: Outcome codes of the track script (its reply's first element).
TRACK_CACHE_MISS, TRACK_STAGED, TRACK_REFUSED, TRACK_BACKLOG_FULL = 0, 1, 2, 3
TRACK_FORBIDDEN, TRACK_RATE_LIMITED, TRACK_SHARE_FULL = 4, 5, 6
_VARIANT = StagedEvent._fields.index("variant_id")


def _role_scope(roles: tuple[str, ...] | None) -> str:
    """The track script's view of the caller: ``*`` (not scoped) or its service roles, comma-separated."""
    if roles is None or any(not rbac.is_service_role(r) for r in roles):
        return "*"
    return ",".join(roles)


def accept_one(
    client: redis.Redis,
    session_factory: Callable[[], Session],
    record: StagedEvent,
    request_id: str = "",
    caller: Caller = INTERNAL,
) -> StagedEvent:
    """Check and stage one validated ``track`` event (usually one Redis round trip).

    The same script spends the caller's budget, checks the experiment's
    ``allowed_services`` and the caller's share of the backlog. Returns the staged
    record (its ``variant_id`` filled in), or the record with no ``variant_id`` when
    the user is a holdout member and the event was kept against the holdout instead.
    Raises the refusing :class:`DomainError` (403, 404, 409, 422, 429) or
    :class:`Unavailable`.
    """
    script = redis_state.script(client, _TRACK_LUA)
    experiment_id, molam_id = record.experiment_id, record.molam_id
    # The staged entry is ``[[event_id, experiment_id, "<variant>", ...]]``; the script
    # splices in the variant it read, so the record is serialised before it is known.
    head = "[" + json.dumps(record[:_VARIANT], separators=(",", ":"), ensure_ascii=False)[:-1] + ',"'
    tail = '",' + json.dumps(record[_VARIANT + 1 :], separators=(",", ":"), ensure_ascii=False)[1:] + "]"
    budget = caller.budget
    try:
        outcome = script(
            keys=[
                definition_key(experiment_id), assignment_key(experiment_id, molam_id), STREAM_KEY,
                budget.key if budget is not None else definition_key(experiment_id), STREAM_CALLER_ENTRIES_KEY,
            ],
            args=[
                caller.max_backlog(), record.variant_id or "", head, tail, request_id,
                caller.sub, caller.backlog_entries(),
                budget.policy.limit if budget is not None else 0, budget.policy.window_s if budget is not None else 0,
                _role_scope(caller.roles),
            ],
        )
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the event was not accepted ({exc})", retry_after=2) from exc
    code = outcome[0]
    if code == TRACK_STAGED:
        return record._replace(variant_id=outcome[1].decode())
    if code == TRACK_RATE_LIMITED:
        raise budget.refuse(int(outcome[1]))  # type: ignore[union-attr]
    if code == TRACK_FORBIDDEN:
        raise Forbidden(
            f"experiment {experiment_id} does not allow the service role(s) {', '.join(caller.roles or ())}",
            errors={"json": {"experiment_id": ["this service may not track on the experiment"]}},
        )
    if code == TRACK_REFUSED:
        # Raises: the cached status or variant refuses the event.
        check_assignment(
            record, Lookup({experiment_id: outcome[1].decode()}, {(experiment_id, molam_id): outcome[2].decode()})
        )
    if code == TRACK_BACKLOG_FULL:
        raise Unavailable("the ingestion backlog is full; retry shortly", retry_after=BACKLOG_RETRY_AFTER_S)
    if code == TRACK_SHARE_FULL:
        raise share_exceeded(caller)
    # A cache miss: the budget is already spent, the general path must not spend it again.
    found = lookup(client, session_factory, [(experiment_id, molam_id)])
    try:
        record = check_assignment(record, found, caller.roles)
    except Invalid:
        if accept_for_holdout(session_factory, record, found):
            return record
        raise
    stage(client, [record], request_id, caller)
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

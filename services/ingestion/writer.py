"""The write side of ingestion: drain the stream, write raw events and rollups in one transaction.

A drain reads the ``ingest:events`` stream through the ``ingest-writers`` consumer
group, about ``BATCH_EVENTS`` events at a time, and writes each batch with one COPY
into a temporary staging table plus one set-based statement (raw insert with
duplicates skipped, dead letters, per-user then per-variant rollup upserts). Stream
entries are acknowledged and deleted only after the commit; a crash before that
leaves them pending, and the next drain (or any other consumer, once they have been
idle for ``CLAIM_IDLE_MS``) writes them again, the unique ``event_id`` making the
second write a no-op.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import redis
from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError

from core import db, metrics

from ..cache import STREAM_CALLER_ENTRIES_KEY, STREAM_KEY
from ..cache import STREAM_GROUP as GROUP
from .records import RECORD_FIELDS, StagedEvent, coerce_record
from .staging import ENTRY_EVENTS

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Events written per PostgreSQL transaction (a drain reads until it has about this many).
BATCH_EVENTS = 5000
#: How long a drain that has caught up waits for new entries before it ends (ms, < socket timeout).
IDLE_WAIT_MS = 200
#: Pending entries idle this long belong to a dead consumer and are claimed.
CLAIM_IDLE_MS = 10_000
#: Advisory lock class shared by drains (shared) and reconcile (exclusive) per experiment.
ROLLUP_LOCK_CLASS = 147


_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS ingest_staging (
    event_id text NOT NULL,
    experiment_id uuid NOT NULL,
    variant_id uuid NOT NULL,
    molam_id text NOT NULL,
    event_type text NOT NULL,
    value double precision,
    currency text,
    metadata jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    amount_minor bigint
) ON COMMIT DELETE ROWS
"""

_COPY_STAGING = f"COPY ingest_staging ({', '.join(RECORD_FIELDS)}) FROM STDIN"

_LOCK_EXPERIMENTS = (
    f"SELECT pg_advisory_xact_lock_shared({ROLLUP_LOCK_CLASS}, hashtext(e)) FROM unnest(%s::text[]) AS e"
)

# One statement: insert the raw events (duplicates skipped), dead-letter events whose
# variant is not a variant of their experiment, then fold what was *inserted* into the
# per-user rollups and, from the per-user deltas, into the per-variant rollups.
#
# * users: a user-rollup row that did not exist before has events equal to this batch's
#   delta (existing rows always hold >= 1 event), so "new user" is exact under concurrency:
#   ON CONFLICT DO UPDATE waits for a concurrent inserter and then updates its row.
# * user_value_sum_squares grows by new_sum^2 - old_sum^2 = d * (2 * new_sum - d).
# * money: amounts (integer minor units) are summed per user, currency and UTC day of
#   occurred_at, so the analysis converts each day at that day's rate and re-prices when
#   a rate arrives late, without reading raw events.
# * Every lock is taken in one global order (event ids, user keys, variant keys, each
#   sorted), and the variant rows, the contended ones, last, just before the commit.
_WRITE_BATCH = """
WITH ins AS (
    INSERT INTO experiment_metrics
        (event_id, experiment_id, variant_id, molam_id, event_type, value, currency, amount_minor, metadata,
         occurred_at, received_at)
    SELECT s.event_id, s.experiment_id, s.variant_id, s.molam_id, s.event_type, s.value, s.currency,
           s.amount_minor, s.metadata, s.occurred_at, s.received_at
    FROM ingest_staging s
    JOIN experiment_variants v ON v.id = s.variant_id AND v.experiment_id = s.experiment_id
    ORDER BY s.event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING experiment_id, variant_id, molam_id, event_type, value, currency, amount_minor, occurred_at
), money AS (
    INSERT INTO experiment_user_money_rollups AS m
        (experiment_id, molam_id, event_type, currency, day, variant_id, events, amount_minor)
    SELECT experiment_id, molam_id, event_type, currency, (occurred_at AT TIME ZONE 'UTC')::date, variant_id,
           count(*), sum(amount_minor)
    FROM ins
    WHERE amount_minor IS NOT NULL
    GROUP BY experiment_id, molam_id, event_type, currency, (occurred_at AT TIME ZONE 'UTC')::date, variant_id
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (experiment_id, molam_id, event_type, currency, day) DO UPDATE SET
        events = m.events + EXCLUDED.events,
        amount_minor = m.amount_minor + EXCLUDED.amount_minor
    RETURNING 1
), dead AS (
    INSERT INTO experiment_metric_dead_letters (event_id, payload, error)
    SELECT DISTINCT ON (s.event_id) s.event_id, to_jsonb(s),
           'variant ' || s.variant_id || ' is not a variant of experiment ' || s.experiment_id
    FROM ingest_staging s
    WHERE NOT EXISTS (
        SELECT 1 FROM experiment_variants v WHERE v.id = s.variant_id AND v.experiment_id = s.experiment_id
    ) AND NOT EXISTS (SELECT 1 FROM experiment_metric_dead_letters d WHERE d.event_id = s.event_id)
    RETURNING 1
), per_user AS (
    SELECT experiment_id, molam_id, event_type, variant_id, count(*) AS events,
           coalesce(sum(value), 0) AS value_sum, min(occurred_at) AS first_at, max(occurred_at) AS last_at
    FROM ins
    GROUP BY experiment_id, molam_id, event_type, variant_id
), upserted AS (
    INSERT INTO experiment_user_rollups AS u
        (experiment_id, molam_id, event_type, variant_id, events, value_sum, first_event_at, last_event_at)
    SELECT experiment_id, molam_id, event_type, variant_id, events, value_sum, first_at, last_at
    FROM per_user
    ORDER BY experiment_id, molam_id, event_type
    ON CONFLICT (experiment_id, molam_id, event_type) DO UPDATE SET
        events = u.events + EXCLUDED.events,
        value_sum = u.value_sum + EXCLUDED.value_sum,
        first_event_at = LEAST(u.first_event_at, EXCLUDED.first_event_at),
        last_event_at = GREATEST(u.last_event_at, EXCLUDED.last_event_at)
    RETURNING u.experiment_id, u.molam_id, u.event_type, u.events, u.value_sum
), user_delta AS (
    SELECT p.experiment_id, p.variant_id, p.event_type,
           count(*) FILTER (WHERE n.events = p.events) AS new_users,
           sum(p.value_sum * (2 * n.value_sum - p.value_sum)) AS user_value_sum_squares
    FROM per_user p
    JOIN upserted n USING (experiment_id, molam_id, event_type)
    GROUP BY p.experiment_id, p.variant_id, p.event_type
), event_delta AS (
    SELECT experiment_id, variant_id, event_type, count(*) AS events, count(value) AS value_count,
           coalesce(sum(value), 0) AS value_sum, coalesce(sum(value * value), 0) AS value_sum_squares
    FROM ins
    GROUP BY experiment_id, variant_id, event_type
), rolled AS (
    INSERT INTO experiment_variant_rollups AS r
        (experiment_id, variant_id, event_type, events, users, value_count, value_sum, value_sum_squares,
         user_value_sum_squares, updated_at)
    SELECT e.experiment_id, e.variant_id, e.event_type, e.events, d.new_users, e.value_count, e.value_sum,
           e.value_sum_squares, d.user_value_sum_squares, now()
    FROM event_delta e
    JOIN user_delta d USING (experiment_id, variant_id, event_type)
    ORDER BY e.experiment_id, e.variant_id, e.event_type
    ON CONFLICT (experiment_id, variant_id, event_type) DO UPDATE SET
        events = r.events + EXCLUDED.events,
        users = r.users + EXCLUDED.users,
        value_count = r.value_count + EXCLUDED.value_count,
        value_sum = r.value_sum + EXCLUDED.value_sum,
        value_sum_squares = r.value_sum_squares + EXCLUDED.value_sum_squares,
        user_value_sum_squares = r.user_value_sum_squares + EXCLUDED.user_value_sum_squares,
        updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM dead), (SELECT count(*) FROM rolled),
       (SELECT coalesce(json_agg(json_build_array(experiment_id, event_type, n)), '[]'::json)
        FROM (SELECT experiment_id, event_type, count(*) AS n FROM ins GROUP BY experiment_id, event_type) AS by_type)
"""

# Idempotent: a batch redelivered after its dead letters committed does not file them twice.
_INSERT_DEAD_LETTER = """
INSERT INTO experiment_metric_dead_letters (event_id, payload, error)
SELECT %(event_id)s::text, %(payload)s::jsonb, %(error)s::text
WHERE %(event_id)s::text IS NULL OR NOT EXISTS (
    SELECT 1 FROM experiment_metric_dead_letters WHERE event_id = %(event_id)s::text
)
"""


@dataclass
class WriteResult:
    received: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    #: Inserted events per (experiment_id, event_type).
    inserted_by: Counter = field(default_factory=Counter)

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted - self.dead_lettered

    def add(self, other: WriteResult) -> None:
        self.received += other.received
        self.inserted += other.inserted
        self.dead_lettered += other.dead_lettered
        self.inserted_by.update(other.inserted_by)


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL kept failing with transient errors; the batch stays pending in the stream."""


#: Errors worth retrying the same batch for: the batch is fine, the database is not (yet).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # connection trouble, deadlocks, serialization failures, admin shutdown
    psycopg.InterfaceError,
    pg_errors.LockNotAvailable,
    pg_errors.QueryCanceled,
)


def _write_once(pg: psycopg.Connection, records: Sequence[StagedEvent], *, clear: bool = False) -> WriteResult:
    with pg.cursor() as cursor:
        cursor.execute(_STAGING_DDL)
        if clear:  # ON COMMIT DELETE ROWS empties it between transactions, not between savepoints
            cursor.execute("DELETE FROM ingest_staging")
        cursor.execute(_LOCK_EXPERIMENTS, (sorted({r.experiment_id for r in records}),))
        with cursor.copy(_COPY_STAGING) as copy:
            for record in records:
                copy.write_row(record)
        inserted, dead, _, by_type = cursor.execute(_WRITE_BATCH).fetchone()
    return WriteResult(
        received=len(records),
        inserted=inserted,
        dead_lettered=dead,
        inserted_by=Counter({(str(experiment_id), event_type): n for experiment_id, event_type, n in by_type}),
    )


def _dead_letter(pg: psycopg.Connection, event_id: str | None, payload: object, error: str) -> None:
    with pg.cursor() as cursor:
        cursor.execute(
            _INSERT_DEAD_LETTER,
            {"event_id": event_id, "payload": json.dumps(payload, default=str), "error": error[:2000]},
        )


def write_records(pg: psycopg.Connection, records: Sequence[StagedEvent]) -> WriteResult:
    """Write one batch in one transaction (committed here); isolate poison on a data error.

    Transient errors (connection loss, deadlock, serialization failure) propagate after
    a rollback so the caller can retry the whole batch. Any other database error means
    some event in the batch cannot be written: each event is then retried on its own
    (one savepoint per event, one transaction) and those that still fail go to the
    dead-letter table with the error, so one bad event never blocks its neighbours.
    """
    try:
        result = _write_once(pg, records)
        pg.commit()
        return result
    except TRANSIENT_ERRORS:
        _safe_rollback(pg)
        raise
    except psycopg.Error as exc:
        _safe_rollback(pg)
        log.warning("batch of %d events failed (%s); isolating the poison", len(records), exc)
    result = WriteResult()
    try:
        for record in records:
            pg.execute("SAVEPOINT one_event")
            try:
                result.add(_write_once(pg, [record], clear=True))
                pg.execute("RELEASE SAVEPOINT one_event")
            except TRANSIENT_ERRORS:
                raise
            except psycopg.Error as exc:
                pg.execute("ROLLBACK TO SAVEPOINT one_event")
                _dead_letter(pg, record.event_id, record._asdict(), f"write failed: {exc}")
                result.received += 1
                result.dead_lettered += 1
        pg.commit()
    except BaseException:
        _safe_rollback(pg)
        raise
    return result


def _safe_rollback(pg: psycopg.Connection) -> None:
    try:
        pg.rollback()
    except psycopg.Error:
        pass


def with_retry(
    work: Callable[[psycopg.Connection], T], what: str, *, attempts: int = 4, first_delay_s: float = 0.2
) -> T:
    """Run ``work`` on a pooled connection, retrying transient failures with jittered backoff.

    After ``attempts`` failures it raises :class:`DatabaseUnavailable`; the caller has not
    acknowledged anything, so the entries stay pending and are written later.
    """
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        connection = None
        try:
            try:
                connection = db.get_engine().raw_connection()
            except DBAPIError as exc:  # SQLAlchemy wraps connect failures
                raise (exc.orig if isinstance(exc.orig, TRANSIENT_ERRORS) else exc) from None
            return work(connection.driver_connection)
        except TRANSIENT_ERRORS as exc:
            if connection is not None:
                connection.invalidate()
            if attempt == attempts:
                raise DatabaseUnavailable(f"{what} failed {attempts} times: {exc}") from exc
            log.warning("transient database error writing %s (attempt %d/%d): %s", what, attempt, attempts, exc)
            time.sleep(delay * (0.5 + random.random()))
            delay *= 2
        finally:
            if connection is not None:
                connection.close()
    raise AssertionError("unreachable")


def write_with_retry(records: Sequence[StagedEvent], **retry: Any) -> WriteResult:
    """:func:`write_records` with :func:`with_retry`."""
    return with_retry(lambda pg: write_records(pg, records), f"a batch of {len(records)} events", **retry)


# --------------------------------------------------------------------------- draining


@dataclass
class DrainReport:
    entries: int = 0
    written: WriteResult = field(default_factory=WriteResult)
    malformed: int = 0
    batches: int = 0
    claimed: int = 0
    #: True when the run stopped on its time budget with entries still waiting.
    backlog: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "received": self.written.received + self.malformed,
            "inserted": self.written.inserted,
            "duplicates": self.written.duplicates,
            "dead_lettered": self.written.dead_lettered + self.malformed,
            "batches": self.batches,
            "claimed": self.claimed,
            "backlog": self.backlog,
            "seconds": round(self.seconds, 3),
        }


def default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _read(
    client: redis.Redis, consumer: str, stream_id: str, count: int, block_ms: int | None = None
) -> list[tuple[bytes, dict]]:
    response = client.xreadgroup(GROUP, consumer, {STREAM_KEY: stream_id}, count=count, block=block_ms)
    if not response:
        return []
    entries = response[0][1]
    vanished = [entry_id for entry_id, fields in entries if not fields]
    if vanished:  # pending but deleted from the stream: nothing left to write
        client.xack(STREAM_KEY, GROUP, *vanished)
    return [(entry_id, fields) for entry_id, fields in entries if fields]


def _read_batch(
    client: redis.Redis, consumer: str, block_ms: int | None = None
) -> tuple[list[tuple[bytes, dict]], bool]:
    """New entries holding about ``BATCH_EVENTS`` events; second value: the stream ran dry.

    With ``block_ms`` the first read waits that long for an entry to arrive.
    """
    entries: list[tuple[bytes, dict]] = []
    events = 0
    while events < BATCH_EVENTS:
        # Entries hold 1 to ENTRY_EVENTS events: never ask for more than could fit.
        wanted = max(1, (BATCH_EVENTS - events) // ENTRY_EVENTS)
        got = _read(client, consumer, ">", wanted, block_ms if not entries else None)
        entries.extend(got)
        for _, fields in got:
            events += _events_in(fields)
        if len(got) < wanted:
            return entries, True
    return entries, False


def _events_in(fields: dict) -> int:
    try:
        return max(1, int(fields.get(b"n", 1)))
    except ValueError:
        return 1


def _decode(entries: list[tuple[bytes, dict]]) -> tuple[list[StagedEvent], list[tuple[str | None, object, str]]]:
    records: list[StagedEvent] = []
    poison: list[tuple[str | None, object, str]] = []
    for entry_id, fields in entries:
        payload = fields.get(b"e")
        try:
            batch = json.loads(payload) if payload is not None else None
        except ValueError as exc:
            poison.append((None, {"stream_entry": entry_id.decode(), "raw": payload.decode(errors="replace")}, f"undecodable entry: {exc}"))
            continue
        if not isinstance(batch, list):
            poison.append((None, {"stream_entry": entry_id.decode(), "raw": str(fields)[:4000]}, "entry holds no event list"))
            continue
        for raw in batch:
            try:
                records.append(coerce_record(raw))
            except (ValueError, TypeError, OverflowError) as exc:
                event_id = raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], str) else None
                poison.append((event_id, raw, str(exc)))
    return records, poison


# XACK, then XDEL entry by entry: an entry actually deleted here (not by a concurrent
# drain that claimed it too) gives its caller's backlog share back (field ``c``), so the
# per-caller counts stay exact whoever acknowledges first. ARGV: the group, then
# (entry id, caller) pairs.
_ACKNOWLEDGE_LUA = """
for i = 2, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 and ARGV[i + 1] ~= '' then
    if redis.call('HINCRBY', KEYS[2], ARGV[i + 1], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[i + 1]) end
  end
end
return 1
"""
_acknowledge_scripts: dict[int, Any] = {}


def _acknowledge(client: redis.Redis, entries: list[tuple[bytes, dict]]) -> None:
    """XACK then XDEL, atomically (the stream's length is the backlog), returning each caller's share."""
    script = _acknowledge_scripts.get(id(client))
    if script is None:
        script = _acknowledge_scripts[id(client)] = client.register_script(_ACKNOWLEDGE_LUA)
    args: list[Any] = [GROUP]
    for entry_id, fields in entries:
        args.extend((entry_id, fields.get(b"c", b"")))
    script(keys=[STREAM_KEY, STREAM_CALLER_ENTRIES_KEY], args=args)


def request_ids(entries: list[tuple[bytes, dict]]) -> list[str]:
    """The API request ids the entries came from (field ``r``), in order, without repeats."""
    return list(dict.fromkeys(fields[b"r"].decode(errors="replace") for _, fields in entries if fields.get(b"r")))


def process_entries(client: redis.Redis, entries: list[tuple[bytes, dict]], report: DrainReport) -> None:
    """Write the entries' events in one transaction, then acknowledge them and count them."""
    if not entries:
        return
    started = time.perf_counter()
    records, poison = _decode(entries)
    written = WriteResult()
    try:
        if poison:
            _write_poison(poison)
        if records:
            written = write_with_retry(records)
    except DatabaseUnavailable:
        metrics.INGEST_DRAIN_FAILURES.inc()
        log.error(
            "a batch of %d events could not be written and stays queued; request ids: %s",
            len(records) + len(poison), ", ".join(request_ids(entries)) or "none recorded",
        )
        raise
    # Counted once committed: should the acknowledgement fail, the redelivered batch is
    # counted again only as duplicates.
    _count(written, len(poison), time.perf_counter() - started)
    dead = written.dead_lettered + len(poison)
    if dead:
        log.warning(
            "%d of %d events went to the dead-letter table; request ids of the batch: %s",
            dead, written.received + len(poison), ", ".join(request_ids(entries)) or "none recorded",
        )
    _acknowledge(client, entries)
    report.malformed += len(poison)
    report.written.add(written)
    report.batches += 1
    report.entries += len(entries)


def _count(written: WriteResult, malformed: int, seconds: float) -> None:
    metrics.INGEST_BATCH_SECONDS.observe(seconds)
    metrics.INGEST_DRAINED.inc(written.received + malformed)
    metrics.INGEST_INSERTED.inc(written.inserted)
    metrics.INGEST_DUPLICATES.inc(written.duplicates)
    metrics.INGEST_DEAD_LETTERS.inc(written.dead_lettered + malformed)
    for (experiment_id, event_type), n in written.inserted_by.items():
        metrics.EXPERIMENT_METRICS.labels(experiment_id=experiment_id, event_type=event_type).inc(n)


def _write_poison(poison: list[tuple[str | None, object, str]]) -> None:
    def work(pg: psycopg.Connection) -> None:
        try:
            for event_id, payload, error in poison:
                _dead_letter(pg, event_id, payload, error)
            pg.commit()
        except BaseException:
            _safe_rollback(pg)
            raise

    with_retry(work, f"{len(poison)} dead letters")


def drain(
    client: redis.Redis,
    *,
    consumer: str | None = None,
    budget_s: float = 2.0,
    claim_idle_ms: int = CLAIM_IDLE_MS,
) -> DrainReport:
    """Drain the stream for up to ``budget_s`` seconds.

    Order: this consumer's own pending entries (a previous run that failed before
    acknowledging), then entries left pending by dead consumers (idle longer than
    ``claim_idle_ms``, e.g. a worker killed with SIGKILL), then new entries.
    """
    started = time.monotonic()
    consumer = consumer or default_consumer()
    report = DrainReport()
    ensure_group(client)

    # Own pending entries first: "0" re-reads what this consumer was given but never acked.
    while True:
        entries = _read(client, consumer, "0", max(1, BATCH_EVENTS // ENTRY_EVENTS))
        if not entries:
            break
        process_entries(client, entries, report)

    cursor = "0-0"
    while True:
        cursor, claimed, *_ = client.xautoclaim(
            STREAM_KEY, GROUP, consumer, min_idle_time=claim_idle_ms, start_id=cursor,
            count=max(1, BATCH_EVENTS // ENTRY_EVENTS),
        )
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
        if claimed:
            report.claimed += len(claimed)
            process_entries(client, claimed, report)
        if cursor in (b"0-0", "0-0"):
            break

    block_ms: int | None = None
    while True:
        entries, dry = _read_batch(client, consumer, block_ms)
        if not entries:
            break  # idle: nothing new, even after waiting a moment
        process_entries(client, entries, report)
        if time.monotonic() - started >= budget_s:
            report.backlog = True  # events are still flowing: a successor run takes over
            break
        # Caught up: wait briefly for more instead of leaving them to the next beat tick,
        # so under steady traffic events are written within a batch's time, not a tick's.
        block_ms = IDLE_WAIT_MS if dry else None
    report.seconds = time.monotonic() - started
    return report


@dataclass
class Backlog:
    length: int
    pending: int
    lag: int | None
    consumers: int
    #: Unix time (ms) the oldest entry still in the stream was queued; None when empty.
    oldest_ms: int | None = None

    def oldest_age_s(self, now_s: float | None = None) -> float:
        """Seconds the oldest unwritten entry has waited (0 when the stream is empty)."""
        if self.oldest_ms is None:
            return 0.0
        return max(0.0, (time.time() if now_s is None else now_s) - self.oldest_ms / 1000)


def backlog(client: redis.Redis) -> Backlog:
    """Stream length (entries not yet written), pending (delivered, not acknowledged), lag
    and the oldest entry's time (entries are deleted once written, so the first one left is
    the oldest unwritten; its id is the Redis server's clock when it was queued)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.xlen(STREAM_KEY)
        pipe.xrange(STREAM_KEY, "-", "+", count=1)
        length, first = pipe.execute()
    oldest_ms = int(first[0][0].split(b"-")[0]) if first else None
    try:
        groups = client.xinfo_groups(STREAM_KEY)
    except redis.ResponseError:
        groups = []
    for group in groups:
        if group.get("name") in (GROUP, GROUP.encode()):
            return Backlog(
                length, int(group.get("pending", 0)), group.get("lag"), int(group.get("consumers", 0)), oldest_ms
            )
    return Backlog(length, 0, None, 0, oldest_ms)


def prune_consumers(client: redis.Redis, idle_ms: int = 3600_000) -> int:
    """Forget consumers (dead worker processes) with nothing pending and idle for an hour."""
    removed = 0
    try:
        consumers = client.xinfo_consumers(STREAM_KEY, GROUP)
    except redis.ResponseError:
        return 0
    for consumer in consumers:
        if int(consumer.get("pending", 0)) == 0 and int(consumer.get("idle", 0)) >= idle_ms:
            client.xgroup_delconsumer(STREAM_KEY, GROUP, consumer["name"])
            removed += 1
    return removed

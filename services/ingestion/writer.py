"""The PostgreSQL side of ingestion: write raw events and rollups in one transaction.

Each batch (about ``BATCH_EVENTS`` events, read from the stream by
:mod:`services.ingestion.drain`) is written with one COPY into a temporary staging
table plus one set-based statement: raw insert with duplicates skipped, dead letters,
per-user then per-variant rollup upserts. Transient connection failures are retried
on a fresh connection (:func:`with_retry`); the unique ``event_id`` makes a repeated
write a no-op.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError

from core import db

from .records import RECORD_FIELDS, StagedEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Events written per PostgreSQL transaction (a drain reads until it has about this many).
BATCH_EVENTS = 5000
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
        row = cursor.execute(_WRITE_BATCH).fetchone()
        assert row is not None  # the statement always returns one row
        inserted, dead, _, by_type = row
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
            return work(cast("psycopg.Connection[Any]", connection.driver_connection))
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


def write_dead_letters(poison: list[tuple[str | None, object, str]]) -> None:
    """Keep undecodable stream entries as dead letters, (event id, payload, error) each."""
    def work(pg: psycopg.Connection) -> None:
        try:
            for event_id, payload, error in poison:
                _dead_letter(pg, event_id, payload, error)
            pg.commit()
        except BaseException:
            _safe_rollback(pg)
            raise

    with_retry(work, f"{len(poison)} dead letters")

"""Recompute rollups from raw events: find drift and repair it.

The drain keeps ``experiment_user_rollups``, ``experiment_variant_rollups`` and
``experiment_user_money_rollups`` up to
date incrementally, in the transaction that inserts the raw events. Reconciliation
is the independent check: it aggregates ``experiment_metrics`` from scratch, compares
with the stored rollups (floating-point sums within a relative tolerance, counts
exactly) and, unless asked only to report, rewrites the experiment's rollups.

Each experiment is reconciled in its own transaction holding the experiment's
advisory lock exclusively; drains hold it shared while they write, so a repair never
overwrites a delta that committed between its aggregation and its rewrite.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from .writer import ROLLUP_LOCK_CLASS

#: Sums accumulated in a different order differ in the last bits; anything beyond this is drift.
RELATIVE_TOLERANCE = 1e-9

# From-scratch aggregates, one experiment at a time (:id).
_EXPECTED_USERS = """
SELECT experiment_id, molam_id, event_type,
       (array_agg(variant_id ORDER BY occurred_at, id))[1] AS variant_id,
       count(*) AS events, coalesce(sum(value), 0) AS value_sum,
       min(occurred_at) AS first_event_at, max(occurred_at) AS last_event_at
FROM experiment_metrics
WHERE experiment_id = :id
GROUP BY experiment_id, molam_id, event_type
"""

_EXPECTED_VARIANTS = """
WITH per_user AS (
    SELECT variant_id, event_type, molam_id, coalesce(sum(value), 0) AS value_sum
    FROM experiment_metrics WHERE experiment_id = :id
    GROUP BY variant_id, event_type, molam_id
), per_variant AS (
    SELECT variant_id, event_type, count(*) AS events, count(value) AS value_count,
           coalesce(sum(value), 0) AS value_sum, coalesce(sum(value * value), 0) AS value_sum_squares
    FROM experiment_metrics WHERE experiment_id = :id
    GROUP BY variant_id, event_type
)
SELECT CAST(:id AS uuid) AS experiment_id, v.variant_id, v.event_type, v.events,
       (SELECT count(*) FROM per_user u WHERE u.variant_id = v.variant_id AND u.event_type = v.event_type) AS users,
       v.value_count, v.value_sum, v.value_sum_squares,
       (SELECT coalesce(sum(u.value_sum * u.value_sum), 0) FROM per_user u
         WHERE u.variant_id = v.variant_id AND u.event_type = v.event_type) AS user_value_sum_squares
FROM per_variant v
"""


_EXPECTED_MONEY = """
SELECT experiment_id, molam_id, event_type, currency, (occurred_at AT TIME ZONE 'UTC')::date AS day,
       (array_agg(variant_id ORDER BY occurred_at, id))[1] AS variant_id,
       count(*) AS events, sum(amount_minor) AS amount_minor
FROM experiment_metrics
WHERE experiment_id = :id AND amount_minor IS NOT NULL
GROUP BY experiment_id, molam_id, event_type, currency, (occurred_at AT TIME ZONE 'UTC')::date
"""


def _close(column: str) -> str:
    return (
        f"abs(e.{column} - a.{column}) <= {RELATIVE_TOLERANCE} * greatest(abs(e.{column}), abs(a.{column}), 1)"
    )


# Rows missing from the stored rollups, extra in them, or differing.
_DRIFT_USERS = f"""
WITH e AS ({_EXPECTED_USERS})
SELECT count(*) FILTER (WHERE a.molam_id IS NULL) AS missing,
       count(*) FILTER (WHERE e.molam_id IS NULL) AS extra,
       count(*) FILTER (WHERE e.molam_id IS NOT NULL AND a.molam_id IS NOT NULL AND NOT (
           e.variant_id = a.variant_id AND e.events = a.events AND {_close("value_sum")}
           AND e.first_event_at = a.first_event_at AND e.last_event_at = a.last_event_at)) AS differ
FROM e
FULL JOIN (SELECT * FROM experiment_user_rollups WHERE experiment_id = :id) a
  ON a.molam_id = e.molam_id AND a.event_type = e.event_type
"""

_DRIFT_VARIANTS = f"""
WITH e AS ({_EXPECTED_VARIANTS})
SELECT count(*) FILTER (WHERE a.variant_id IS NULL) AS missing,
       count(*) FILTER (WHERE e.variant_id IS NULL) AS extra,
       count(*) FILTER (WHERE e.variant_id IS NOT NULL AND a.variant_id IS NOT NULL AND NOT (
           e.events = a.events AND e.users = a.users AND e.value_count = a.value_count
           AND {_close("value_sum")} AND {_close("value_sum_squares")} AND {_close("user_value_sum_squares")}
       )) AS differ
FROM e
FULL JOIN (SELECT * FROM experiment_variant_rollups WHERE experiment_id = :id) a
  ON a.variant_id = e.variant_id AND a.event_type = e.event_type
"""

# Money is exact: amounts must match to the minor unit.
_DRIFT_MONEY = f"""
WITH e AS ({_EXPECTED_MONEY})
SELECT count(*) FILTER (WHERE a.molam_id IS NULL) AS missing,
       count(*) FILTER (WHERE e.molam_id IS NULL) AS extra,
       count(*) FILTER (WHERE e.molam_id IS NOT NULL AND a.molam_id IS NOT NULL AND NOT (
           e.variant_id = a.variant_id AND e.events = a.events AND e.amount_minor = a.amount_minor)) AS differ
FROM e
FULL JOIN (SELECT * FROM experiment_user_money_rollups WHERE experiment_id = :id) a
  ON a.molam_id = e.molam_id AND a.event_type = e.event_type AND a.currency = e.currency AND a.day = e.day
"""

_REPAIR = [
    "DELETE FROM experiment_user_rollups WHERE experiment_id = :id",
    f"""INSERT INTO experiment_user_rollups
        (experiment_id, molam_id, event_type, variant_id, events, value_sum, first_event_at, last_event_at)
        SELECT experiment_id, molam_id, event_type, variant_id, events, value_sum, first_event_at, last_event_at
        FROM ({_EXPECTED_USERS}) e""",
    "DELETE FROM experiment_variant_rollups WHERE experiment_id = :id",
    f"""INSERT INTO experiment_variant_rollups
        (experiment_id, variant_id, event_type, events, users, value_count, value_sum, value_sum_squares,
         user_value_sum_squares, updated_at)
        SELECT experiment_id, variant_id, event_type, events, users, value_count, value_sum, value_sum_squares,
               user_value_sum_squares, now()
        FROM ({_EXPECTED_VARIANTS}) e""",
    "DELETE FROM experiment_user_money_rollups WHERE experiment_id = :id",
    f"""INSERT INTO experiment_user_money_rollups
        (experiment_id, molam_id, event_type, currency, day, variant_id, events, amount_minor)
        SELECT experiment_id, molam_id, event_type, currency, day, variant_id, events, amount_minor
        FROM ({_EXPECTED_MONEY}) e""",
]


@dataclass(frozen=True)
class TableDrift:
    missing: int
    extra: int
    differ: int

    @property
    def total(self) -> int:
        return self.missing + self.extra + self.differ


@dataclass(frozen=True)
class ExperimentDrift:
    experiment_id: uuid.UUID
    users: TableDrift
    variants: TableDrift
    repaired: bool
    money: TableDrift = TableDrift(0, 0, 0)

    @property
    def total(self) -> int:
        return self.users.total + self.variants.total + self.money.total


def experiments_with_data(session: Session) -> list[uuid.UUID]:
    """Experiments having raw events or rollups (the ones worth reconciling)."""
    rows = session.execute(
        text(
            "SELECT experiment_id FROM experiment_metrics GROUP BY experiment_id "
            "UNION SELECT experiment_id FROM experiment_variant_rollups "
            "UNION SELECT experiment_id FROM experiment_user_rollups ORDER BY 1"
        )
    )
    return [row[0] for row in rows]


def reconcile_experiment(session: Session, experiment_id: uuid.UUID, *, repair: bool = True) -> ExperimentDrift:
    """Compare one experiment's rollups with its raw events and (optionally) rewrite them.

    Runs in the caller's transaction and commits nothing: the caller commits, releasing
    the advisory lock taken here.
    """
    params = {"id": str(experiment_id)}
    session.execute(
        text(f"SELECT pg_advisory_xact_lock({ROLLUP_LOCK_CLASS}, hashtext(:id))"), params
    )
    users = TableDrift(*session.execute(text(_DRIFT_USERS), params).one())
    variants = TableDrift(*session.execute(text(_DRIFT_VARIANTS), params).one())
    money = TableDrift(*session.execute(text(_DRIFT_MONEY), params).one())
    repaired = False
    if repair and (users.total or variants.total or money.total):
        for statement in _REPAIR:
            session.execute(text(statement), params)
        repaired = True
    return ExperimentDrift(experiment_id, users, variants, repaired, money)


def reconcile(
    session_factory: Callable[[], Session],
    experiment_ids: Iterable[uuid.UUID],
    *,
    repair: bool = True,
    on_progress: Callable[[ExperimentDrift], None] | None = None,
) -> list[ExperimentDrift]:
    """Reconcile each experiment in its own short transaction (locks are never held long)."""
    results: list[ExperimentDrift] = []
    for experiment_id in experiment_ids:
        session = session_factory()
        try:
            drift = reconcile_experiment(session, experiment_id, repair=repair)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        results.append(drift)
        if on_progress is not None:
            on_progress(drift)
    return results

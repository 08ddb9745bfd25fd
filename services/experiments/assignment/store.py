"""The PostgreSQL side of assignment: the row that is the truth, on a connection each thread keeps.

``experiment_assignments`` is unique on (experiment, ``molam_id``): the first
``INSERT … ON CONFLICT DO NOTHING`` wins, whoever else races it, and everyone else
reads the winner's row. The statements run in autocommit on the driver's cursor, so
a row is committed before Redis gets its copy and before the answer.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from core import db
from models.enums import ExperimentStatus

from .allocation import UserContext

log = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_S = 2

DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)

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
    has died (PostgreSQL restarted) is dropped by :func:`on_held`, and the next
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


def on_held(statement: Callable[..., Any], *args: Any) -> Any:
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


def _driver(connection: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under SQLAlchemy's (its cursors are context managers)."""
    return cast("psycopg.Connection[Any]", connection.connection.driver_connection)


def insert_assignment(
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


def record_holdout_member(connection: Connection, experiment_id: str, molam_id: str, holdout_ids: list[str]) -> None:
    """Record the user in each holdout (first asker wins; safe to repeat)."""
    with _driver(connection).cursor() as cursor:
        cursor.execute(
            _INSERT_HOLDOUT_MEMBERS, {"holdout_ids": holdout_ids, "molam_id": molam_id, "experiment_id": experiment_id}
        )


def existing_assignment(connection: Connection, experiment_id: str, molam_id: str) -> tuple[Any, datetime] | None:
    with _driver(connection).cursor() as cursor:
        row = cursor.execute(_SELECT_ASSIGNMENT, {"experiment_id": experiment_id, "molam_id": molam_id}).fetchone()
    return None if row is None else (row[0], row[1])

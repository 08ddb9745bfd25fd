"""Test data for SIRA: assignments and raw events written straight to PostgreSQL, with the
rollups derived from the raw events by a from-scratch SQL aggregation (what the ingestion
worker maintains incrementally), so SIRA's tests do not depend on the ingestion code.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg

from core.config import libpq_url

NOW = datetime.now(timezone.utc)

#: Attribution windows switched off for every event type: a bandit experiment then
#: decides on all users at once, like a fixed split (tests that set counts directly).
NO_WINDOWS = {event_type: None for event_type in ("conversion", "refund", "churn", "fraud_alert", "click", "view")}


@dataclass
class RawData:
    """What a test inserted, kept in Python to recompute the expected numbers."""

    assignments: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def insert_assignments(conn: psycopg.Connection, experiment_id: str, rows: list[dict[str, Any]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO experiment_assignments
                (experiment_id, variant_id, molam_id, country, lang, device, assigned_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (experiment_id, r["variant_id"], r["molam_id"], r.get("country"), r.get("lang"), r.get("device"),
                 r.get("assigned_at", NOW))
                for r in rows
            ],
        )


def insert_events(conn: psycopg.Connection, experiment_id: str, rows: list[dict[str, Any]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO experiment_metrics
                (event_id, experiment_id, variant_id, molam_id, event_type, value, occurred_at, received_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (uuid.uuid4().hex, experiment_id, r["variant_id"], r["molam_id"], r["event_type"], r.get("value"),
                 r.get("occurred_at", NOW), r.get("occurred_at", NOW))
                for r in rows
            ],
        )


def rebuild_rollups(conn: psycopg.Connection, experiment_id: str) -> None:
    """Recompute both rollup tables of one experiment from its raw events."""
    conn.execute("DELETE FROM experiment_variant_rollups WHERE experiment_id = %s", (experiment_id,))
    conn.execute("DELETE FROM experiment_user_rollups WHERE experiment_id = %s", (experiment_id,))
    conn.execute(
        """
        INSERT INTO experiment_user_rollups
            (experiment_id, molam_id, event_type, variant_id, events, value_sum, first_event_at, last_event_at)
        SELECT experiment_id, molam_id, event_type, min(variant_id::text)::uuid, count(*),
               coalesce(sum(value), 0), min(occurred_at), max(occurred_at)
        FROM experiment_metrics WHERE experiment_id = %s
        GROUP BY experiment_id, molam_id, event_type
        """,
        (experiment_id,),
    )
    conn.execute(
        """
        INSERT INTO experiment_variant_rollups
            (experiment_id, variant_id, event_type, events, users, value_count, value_sum,
             value_sum_squares, user_value_sum_squares)
        SELECT e.experiment_id, e.variant_id, e.event_type, e.events, u.users, e.value_count, e.value_sum,
               e.value_sum_squares, u.user_value_sum_squares
        FROM (
            SELECT experiment_id, variant_id, event_type, count(*) AS events, count(value) AS value_count,
                   coalesce(sum(value), 0) AS value_sum, coalesce(sum(value * value), 0) AS value_sum_squares
            FROM experiment_metrics WHERE experiment_id = %s
            GROUP BY experiment_id, variant_id, event_type
        ) e
        JOIN (
            SELECT experiment_id, variant_id, event_type, count(*) AS users,
                   sum(value_sum * value_sum) AS user_value_sum_squares
            FROM experiment_user_rollups WHERE experiment_id = %s
            GROUP BY experiment_id, variant_id, event_type
        ) u USING (experiment_id, variant_id, event_type)
        """,
        (experiment_id, experiment_id),
    )


def simulate(
    database_url: str,
    experiment: dict[str, Any],
    *,
    users_per_arm: list[int],
    rates: dict[str, list[float]],
    seed: int = 7,
    value_event: str | None = "conversion",
    segments: dict[str, list[str]] | None = None,
    assigned_days_ago: tuple[float, float] = (0.0, 0.0),
    returning_rate: float = 0.0,
) -> RawData:
    """Assign users to every arm, give each user events with the given per-arm rates
    (a converting user may convert more than once), write everything and the rollups."""
    rng = np.random.default_rng(seed)
    segments = segments or {}
    raw = RawData()
    for arm_index, variant in enumerate(experiment["variants"]):
        for n in range(users_per_arm[arm_index]):
            days_ago = rng.uniform(*assigned_days_ago) if assigned_days_ago[1] > 0 else 0.0
            assignment = {
                "variant_id": variant["id"],
                "molam_id": f"u-{arm_index}-{n}",
                "assigned_at": NOW - timedelta(days=days_ago),
                **{key: values[rng.integers(len(values))] for key, values in segments.items()},
            }
            raw.assignments.append(assignment)
            for event_type, per_arm in rates.items():
                if rng.random() < per_arm[arm_index]:
                    for _ in range(1 + int(rng.random() < 0.3)):
                        raw.events.append(
                            {
                                "variant_id": variant["id"],
                                "molam_id": assignment["molam_id"],
                                "event_type": event_type,
                                "value": round(float(rng.gamma(2.0, 20.0)), 2) if event_type == value_event else None,
                                "occurred_at": assignment["assigned_at"] + timedelta(minutes=5),
                            }
                        )
            if returning_rate and rng.random() < returning_rate:
                raw.events.append(
                    {
                        "variant_id": variant["id"],
                        "molam_id": assignment["molam_id"],
                        "event_type": "view",
                        "value": None,
                        "occurred_at": min(assignment["assigned_at"] + timedelta(days=float(rng.uniform(0, 14))), NOW),
                    }
                )
    with psycopg.connect(libpq_url(database_url)) as conn:
        insert_assignments(conn, experiment["id"], raw.assignments)
        insert_events(conn, experiment["id"], raw.events)
        rebuild_rollups(conn, experiment["id"])
    return raw


def set_rollup(
    database_url: str, experiment_id: str, variant_id: str, event_type: str, *, users: int, events: int | None = None
) -> None:
    """Write one rollup row directly (counts only)."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        conn.execute(
            """
            INSERT INTO experiment_variant_rollups (experiment_id, variant_id, event_type, events, users)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (experiment_id, variant_id, event_type)
            DO UPDATE SET events = excluded.events, users = excluded.users
            """,
            (experiment_id, variant_id, event_type, events if events is not None else users, users),
        )


def assign_many(database_url: str, experiment_id: str, variant_id: str, count: int, prefix: str | None = None) -> None:
    """``count`` assigned users in one variant (no context columns)."""
    prefix = prefix or f"{variant_id[:8]}-"
    with psycopg.connect(libpq_url(database_url)) as conn:
        conn.execute(
            """
            INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id)
            SELECT %s, %s, %s || g FROM generate_series(1, %s) g
            """,
            (experiment_id, variant_id, prefix, count),
        )


def set_arm(database_url: str, experiment_id: str, variant_id: str, *, assigned: int, successes: int, event_type: str = "conversion") -> None:
    """An arm with ``assigned`` users of whom ``successes`` had an event of ``event_type``."""
    assign_many(database_url, experiment_id, variant_id, assigned)
    set_rollup(database_url, experiment_id, variant_id, event_type, users=successes)

"""Helpers shared by the ingestion tests: assignments written straight to PostgreSQL,
drains run in-process, and rollups recomputed independently with plain SQL."""
from __future__ import annotations

import math
import uuid
from typing import Any

import psycopg

from core.config import Settings, libpq_url


def assign_users(settings: Settings, experiment: dict[str, Any], molam_ids: list[str]) -> dict[str, str]:
    """Give each user a variant (round robin) by inserting assignment rows directly."""
    variants = [v["id"] for v in experiment["variants"]]
    held = {molam_id: variants[i % len(variants)] for i, molam_id in enumerate(molam_ids)}
    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id) VALUES (%s, %s, %s)",
                [(experiment["id"], variant_id, molam_id) for molam_id, variant_id in held.items()],
            )
    return held


def drain_all(client, rounds: int = 1000) -> dict[str, int]:
    """Run in-process drains until the stream is empty; totals of their reports."""
    from services.ingestion import drain as ingestion_drain

    totals: dict[str, int] = {"inserted": 0, "duplicates": 0, "dead_lettered": 0}
    for _ in range(rounds):
        report = ingestion_drain.drain(client, budget_s=30).as_dict()
        for key in totals:
            totals[key] += report[key]
        if not report["backlog"] and ingestion_writer_backlog(client) == 0:
            return totals
    raise AssertionError("stream did not drain")


def ingestion_writer_backlog(client) -> int:
    from services.ingestion import drain as ingestion_drain

    return ingestion_drain.backlog(client).length


# Independent recomputation (deliberately not services.ingestion.rollups): raw events → rollups.
EXPECTED_VARIANTS = """
WITH per_user AS (
    SELECT experiment_id, variant_id, event_type, molam_id, coalesce(sum(value), 0) AS s
    FROM experiment_metrics GROUP BY 1, 2, 3, 4
), users AS (
    SELECT experiment_id, variant_id, event_type, count(*) AS n, sum(s ^ 2) AS ss FROM per_user GROUP BY 1, 2, 3
), events AS (
    SELECT experiment_id, variant_id, event_type, count(*) AS events, count(value) AS value_count,
           coalesce(sum(value), 0) AS value_sum, coalesce(sum(value ^ 2), 0) AS value_sum_squares
    FROM experiment_metrics GROUP BY 1, 2, 3
)
SELECT e.experiment_id::text, e.variant_id::text, e.event_type, e.events, e.value_count, e.value_sum,
       e.value_sum_squares, u.n, u.ss
FROM events e JOIN users u USING (experiment_id, variant_id, event_type)
"""
STORED_VARIANTS = """
SELECT experiment_id::text, variant_id::text, event_type, events, value_count, value_sum, value_sum_squares,
       users, user_value_sum_squares
FROM experiment_variant_rollups
"""
EXPECTED_USERS = """
SELECT experiment_id::text, molam_id, event_type, min(variant_id::text), count(*), coalesce(sum(value), 0),
       min(occurred_at), max(occurred_at)
FROM experiment_metrics GROUP BY 1, 2, 3
"""
STORED_USERS = """
SELECT experiment_id::text, molam_id, event_type, variant_id::text, events, value_sum, first_event_at, last_event_at
FROM experiment_user_rollups
"""


EXPECTED_MONEY = """
SELECT experiment_id::text, molam_id, event_type, currency, (occurred_at AT TIME ZONE 'UTC')::date,
       min(variant_id::text), count(*), sum(amount_minor)
FROM experiment_metrics WHERE amount_minor IS NOT NULL GROUP BY 1, 2, 3, 4, 5
"""
STORED_MONEY = """
SELECT experiment_id::text, molam_id, event_type, currency, day, variant_id::text, events, amount_minor
FROM experiment_user_money_rollups
"""


def _index(rows: list[tuple], width: int) -> dict[tuple, tuple]:
    return {row[:width]: row[width:] for row in rows}


def _same(a: tuple, b: tuple) -> bool:
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-6):
                return False
        elif x != y:
            return False
    return True


def rollup_mismatches(settings: Settings) -> list[str]:
    """Every difference between the stored rollups and a from-scratch aggregation."""
    problems: list[str] = []
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        for label, expected_sql, stored_sql, width in (
            ("variant", EXPECTED_VARIANTS, STORED_VARIANTS, 3),
            ("user", EXPECTED_USERS, STORED_USERS, 3),
            ("money", EXPECTED_MONEY, STORED_MONEY, 5),
        ):
            expected = _index(conn.execute(expected_sql).fetchall(), width)
            stored = _index(conn.execute(stored_sql).fetchall(), width)
            for key in expected.keys() | stored.keys():
                if key not in stored:
                    problems.append(f"{label} rollup missing for {key}")
                elif key not in expected:
                    problems.append(f"{label} rollup without events for {key}")
                elif not _same(expected[key], stored[key]):
                    problems.append(f"{label} rollup {key}: expected {expected[key]}, stored {stored[key]}")
    return problems


def count_rows(settings: Settings, table: str) -> int:
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def new_event_id() -> str:
    return uuid.uuid4().hex

"""Counts per allocation period and attribution window (what stratified estimates need).

When an experiment's split changed during its life (a bandit republishing its weights,
a pause, a restart: each opens an *allocation period*, recorded on every assignment row)
or when its metrics have attribution windows, SIRA needs counts per period and per
window, which the variant rollups do not hold. Two reads give them: users per (variant,
period) from the assignments index, and successes per (variant, period, event type)
from the per-user rollups joined to the assignments (cost linear in the users with
events, never in the events). The second read is skipped for experiments with one
period and no window: their rollups say everything.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Double, String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from models.enums import EVENT_TYPES

if TYPE_CHECKING:
    from .inputs import ExperimentInput


@dataclass(frozen=True)
class PeriodCounts:
    """Per (allocation period, arm) counts, periods in chronological order.

    ``users`` all users so far; ``matured`` per event type the users whose attribution
    window has closed; ``successes`` / ``matured_successes`` per event type the users
    among them with an event inside the window; ``probability`` the logged probability
    of the arm in the period (NaN where no row says, e.g. the arm got nobody).
    """

    ids: tuple[int, ...]
    users: np.ndarray
    probability: np.ndarray
    matured: dict[str, np.ndarray]
    successes: dict[str, np.ndarray]
    matured_successes: dict[str, np.ndarray]


# Users per (variant, period) from the assignments index alone, and for each window
# the users assigned long enough ago for it to have closed (NULL seconds: all users).
_PERIOD_USERS = text(
    """
    SELECT a.variant_id, a.period, w.seconds, min(a.probability) AS probability,
           count(*) FILTER (WHERE w.seconds IS NULL
                            OR a.assigned_at <= CAST(:now AS timestamptz) - make_interval(secs => w.seconds)) AS users
    FROM unnest(:w_variants, :w_seconds) AS w(variant_id, seconds)
    JOIN experiment_assignments a ON a.variant_id = w.variant_id
    GROUP BY a.variant_id, a.period, w.seconds
    """
).bindparams(
    bindparam("w_variants", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("w_seconds", type_=ARRAY(Double)),
)

# Successes per (variant, period, event type): users with an event of the type inside
# their window, among all users and among users whose window has closed.
_PERIOD_SUCCESSES = text(
    """
    SELECT a.variant_id, a.period, u.event_type,
           count(*) FILTER (WHERE w.seconds IS NULL
                            OR u.first_event_at <= a.assigned_at + make_interval(secs => w.seconds)) AS successes,
           count(*) FILTER (WHERE w.seconds IS NULL
                            OR (u.first_event_at <= a.assigned_at + make_interval(secs => w.seconds)
                                AND a.assigned_at <= CAST(:now AS timestamptz) - make_interval(secs => w.seconds))
           ) AS matured_successes
    FROM experiment_user_rollups u
    JOIN experiment_assignments a ON a.experiment_id = u.experiment_id AND a.molam_id = u.molam_id
    LEFT JOIN unnest(:w_experiments, :w_types, :w_seconds) AS w(experiment_id, event_type, seconds)
           ON w.experiment_id = u.experiment_id AND w.event_type = u.event_type
    WHERE u.experiment_id = ANY(:experiment_ids)
    GROUP BY a.variant_id, a.period, u.event_type
    """
).bindparams(
    bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("w_experiments", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("w_types", type_=ARRAY(String)),
    bindparam("w_seconds", type_=ARRAY(Double)),
)

# (variant, period) -> {window seconds (None: no window): users}
_Users = dict[tuple[uuid.UUID, int], dict[float | None, int]]
# (variant, period) -> the arm's logged probability
_Probability = dict[tuple[uuid.UUID, int], float]


def _read_users(session: Session, experiments: list[ExperimentInput], now: datetime) -> tuple[_Users, _Probability]:
    w_variants, w_seconds = [], []
    for experiment in experiments:
        windows = sorted({w for w in experiment.windows.values() if w is not None})
        for arm in experiment.arms:
            for seconds in [None, *windows]:
                w_variants.append(arm.variant_id)
                w_seconds.append(None if seconds is None else float(seconds))
    users: _Users = {}
    probability: _Probability = {}
    if w_variants:
        rows = session.execute(_PERIOD_USERS, {"w_variants": w_variants, "w_seconds": w_seconds, "now": now})
        for row in rows:
            key = (row.variant_id, int(row.period))
            users.setdefault(key, {})[row.seconds] = int(row.users)
            if row.probability is not None:
                probability[key] = float(row.probability)
    return users, probability


def _read_successes(
    session: Session, stratified: list[ExperimentInput], now: datetime
) -> dict[tuple[uuid.UUID, int, str], tuple[int, int]]:
    """(variant, period, event type) -> (successes, matured successes)."""
    w_experiments, w_types, w_type_seconds = [], [], []
    for experiment in stratified:
        for event_type, seconds in experiment.windows.items():
            if seconds is not None:
                w_experiments.append(experiment.id)
                w_types.append(event_type)
                w_type_seconds.append(float(seconds))
    rows = session.execute(
        _PERIOD_SUCCESSES,
        {
            "experiment_ids": [e.id for e in stratified],
            "w_experiments": w_experiments,
            "w_types": w_types,
            "w_seconds": w_type_seconds,
            "now": now,
        },
    )
    return {(row.variant_id, int(row.period), row.event_type): (int(row.successes), int(row.matured_successes)) for row in rows}


def _per_period(
    experiment: ExperimentInput, ids: tuple[int, ...], users: _Users, probability: _Probability
) -> tuple[np.ndarray, np.ndarray]:
    """(all users, logged probability) as (period, arm) arrays."""
    shape = (len(ids), len(experiment.arms))
    all_users = np.zeros(shape)
    arm_probability = np.full(shape, np.nan)
    for k, period in enumerate(ids):
        for a, arm in enumerate(experiment.arms):
            all_users[k, a] = users.get((arm.variant_id, period), {}).get(None, 0)
            arm_probability[k, a] = probability.get((arm.variant_id, period), np.nan)
    return all_users, arm_probability


def _stratified(
    experiment: ExperimentInput,
    ids: tuple[int, ...],
    users: _Users,
    probability: _Probability,
    successes: dict[tuple[uuid.UUID, int, str], tuple[int, int]],
) -> PeriodCounts:
    all_users, arm_probability = _per_period(experiment, ids, users, probability)
    shape = all_users.shape
    matured = {event_type: np.zeros(shape) for event_type in EVENT_TYPES}
    wins = {event_type: np.zeros(shape) for event_type in EVENT_TYPES}
    matured_wins = {event_type: np.zeros(shape) for event_type in EVENT_TYPES}
    for k, period in enumerate(ids):
        for a, arm in enumerate(experiment.arms):
            by_window = users.get((arm.variant_id, period), {})
            for event_type, seconds in experiment.windows.items():
                matured[event_type][k, a] = by_window.get(None if seconds is None else float(seconds), 0)
                s, m = successes.get((arm.variant_id, period, event_type), (0, 0))
                # Assignments committed between the two reads can make a cell's
                # successes exceed its users by a few; the later table is clamped.
                wins[event_type][k, a] = min(s, all_users[k, a])
                matured_wins[event_type][k, a] = min(m, matured[event_type][k, a])
    return PeriodCounts(ids, all_users, arm_probability, matured, wins, matured_wins)


def load_period_counts(
    session: Session, experiments: list[ExperimentInput], now: datetime
) -> dict[uuid.UUID, dict[str, Any]]:
    """Per experiment, the :class:`ExperimentInput` fields about periods: ``period_ids``,
    ``period_users``, ``period_probability`` and ``period_counts`` (None unless the
    experiment has several periods or an attribution window)."""
    if not experiments:
        return {}
    users, probability = _read_users(session, experiments, now)
    result: dict[uuid.UUID, dict[str, Any]] = {}
    stratified = []
    for experiment in experiments:
        variant_ids = {arm.variant_id for arm in experiment.arms}
        ids = tuple(sorted({period for variant, period in users if variant in variant_ids}))
        period_users, period_probability = _per_period(experiment, ids, users, probability)
        result[experiment.id] = {
            "period_ids": ids,
            "period_users": period_users,
            "period_probability": period_probability,
            "period_counts": None,
        }
        if len(ids) > 1 or any(w is not None for w in experiment.windows.values()):
            stratified.append(experiment)
    if stratified:
        successes = _read_successes(session, stratified, now)
        for experiment in stratified:
            ids = result[experiment.id]["period_ids"] or (0,)
            result[experiment.id]["period_counts"] = _stratified(experiment, ids, users, probability, successes)
    return result

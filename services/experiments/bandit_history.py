"""SIRA's bandit history for charts: per arm α, β, P(best) and weight over time.

``sira.recompute_posteriors`` appends one row per arm, all with the same
``computed_at``, whenever an experiment's counts or weights moved; a *snapshot* is
the set of rows sharing a ``computed_at``. Reads take the latest snapshots (served
by the ``(experiment_id, computed_at)`` index) and return them oldest first.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import BanditHistory

from .lifecycle import get_experiment

DEFAULT_SNAPSHOTS = 500
MAX_SNAPSHOTS = 5000


def bandit_history(
    session: Session, experiment_id: uuid.UUID, *, since: datetime | None = None, limit: int = DEFAULT_SNAPSHOTS
) -> dict[str, Any]:
    """The experiment's arms and its latest ``limit`` snapshots (at or after ``since``), oldest first."""
    experiment = get_experiment(session, experiment_id)
    times = (
        select(BanditHistory.computed_at)
        .where(BanditHistory.experiment_id == experiment_id)
        .distinct()
        .order_by(BanditHistory.computed_at.desc())
        .limit(limit)
    )
    if since is not None:
        times = times.where(BanditHistory.computed_at >= since)
    rows = session.execute(
        select(BanditHistory)
        .where(BanditHistory.experiment_id == experiment_id, BanditHistory.computed_at.in_(times.scalar_subquery()))
        .order_by(BanditHistory.computed_at, BanditHistory.id)
    ).scalars()

    position = {variant.id: index for index, variant in enumerate(experiment.variants)}
    snapshots: list[dict[str, Any]] = []
    for row in rows:
        if not snapshots or snapshots[-1]["computed_at"] != row.computed_at:
            snapshots.append({"computed_at": row.computed_at, "arms": []})
        snapshots[-1]["arms"].append(
            {
                "variant_id": row.variant_id,
                "users": row.users,
                "successes": row.successes,
                "alpha": row.alpha,
                "beta": row.beta,
                "prob_best": row.prob_best,
                "weight": row.weight,
            }
        )
    for snapshot in snapshots:
        snapshot["arms"].sort(key=lambda arm: position.get(arm["variant_id"], len(position)))
    return {
        "experiment_id": experiment.id,
        "mode": experiment.mode,
        "variants": [
            {"variant_id": v.id, "name": v.name, "is_control": v.is_control, "paused": v.paused}
            for v in experiment.variants
        ],
        "snapshots": snapshots,
    }

"""The experiment over time, for charts: SIRA's bandit history annotated per snapshot.

Each snapshot of ``experiment_bandit_history`` holds the cumulative users and successes
of every arm at that recompute (fixed splits are recorded too), so the cumulative
comparison of each arm with control can be read at every point in time without
touching raw events. Per arm this adds the posterior mean and its 95% credible
interval (from the stored α and β), and for every arm but control the relative uplift
(fixed-horizon interval) and the absolute difference with its always-valid 95% band
(the confidence sequence fail-fast uses, :func:`sira.failfast.difference_confidence_sequence`),
in the shape results use: ``{estimate, lower, upper, always_valid_lower,
always_valid_upper, message}``.

History rows count SIRA's *successes* (the good outcome): for a lower-is-better primary
metric those are the users without the event, so the comparison is turned back into the
event rate to read like results do.
"""
from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

import numpy as np
from scipy.stats import beta as beta_distribution
from sqlalchemy.orm import Session

from models.enums import LOWER_IS_BETTER
from services.experiments import bandit_history
from services.experiments.lifecycle import get_experiment
from sira.compare import compare_rates
from sira.failfast import FailFastConfig
from sira.stats import Comparison, ProportionStats
from sira.strata import PeriodTable

CONFIDENCE = 0.95


def _comparison(comparison: Comparison) -> dict[str, Any]:
    return dataclasses.asdict(comparison)


def _annotate_snapshot(snapshot: dict[str, Any], control_id: uuid.UUID | None, lower_is_better: bool,
                       target_samples: float) -> None:
    arms = snapshot["arms"]
    alphas = np.array([arm["alpha"] for arm in arms], dtype=float)
    betas = np.array([arm["beta"] for arm in arms], dtype=float)
    tails = (1.0 - CONFIDENCE) / 2.0
    lows = beta_distribution.ppf(tails, alphas, betas)
    highs = beta_distribution.ppf(1.0 - tails, alphas, betas)
    for arm, a, b, low, high in zip(arms, alphas, betas, lows, highs):
        arm["posterior_mean"] = float(a / (a + b))
        arm["credible_interval"] = {"lower": float(low), "upper": float(high)}
        arm["event_users"] = arm["users"] - arm["successes"] if lower_is_better else arm["successes"]
        arm["uplift"] = None
        arm["difference"] = None
    control_index = next((i for i, arm in enumerate(arms) if arm["variant_id"] == control_id), None)
    if control_index is None:
        return
    table = PeriodTable.single([ProportionStats(users=arm["users"], successes=arm["event_users"]) for arm in arms])
    for index, arm in enumerate(arms):
        if index == control_index:
            continue
        difference, uplift = compare_rates(table, control_index, index, CONFIDENCE, target_samples)
        arm["difference"] = _comparison(difference)
        arm["uplift"] = _comparison(uplift)


def experiment_over_time(
    session: Session, experiment_id: uuid.UUID, *, since: datetime | None = None, limit: int = bandit_history.DEFAULT_SNAPSHOTS
) -> dict[str, Any]:
    experiment = get_experiment(session, experiment_id)
    document = bandit_history.bandit_history(session, experiment_id, since=since, limit=limit)
    lower_is_better = experiment.primary_metric in LOWER_IS_BETTER
    control_id = next((v.id for v in experiment.variants if v.is_control), None)
    target_samples = float((experiment.fail_fast or {}).get("target_samples") or FailFastConfig().target_samples)
    for snapshot in document["snapshots"]:
        _annotate_snapshot(snapshot, control_id, lower_is_better, target_samples)
    document["primary_metric"] = experiment.primary_metric
    document["lower_is_better"] = lower_is_better
    document["confidence"] = CONFIDENCE
    return document

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

import uuid
from datetime import datetime
from typing import Any

import numpy as np
from scipy.stats import beta as beta_distribution
from sqlalchemy.orm import Session

from models.enums import LOWER_IS_BETTER
from services.experiments import bandit_history
from services.experiments.lifecycle import get_experiment
from sira.failfast import FailFastConfig, difference_confidence_sequence
from sira.stats import ProportionStats, relative_uplift

CONFIDENCE = 0.95


def _comparison(estimate: float | None, lower: float | None, upper: float | None, message: str = "",
                always_valid: tuple[float, float] | None = None) -> dict[str, Any]:
    return {
        "estimate": estimate,
        "lower": lower,
        "upper": upper,
        "always_valid_lower": always_valid[0] if always_valid else None,
        "always_valid_upper": always_valid[1] if always_valid else None,
        "message": message,
    }


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
    control = next((arm for arm in arms if arm["variant_id"] == control_id), None)
    if control is None:
        return
    control_stats = ProportionStats(users=control["users"], successes=control["event_users"])
    for arm in arms:
        if arm is control:
            continue
        stats = ProportionStats(users=arm["users"], successes=arm["event_users"])
        uplift = relative_uplift(control_stats, stats, CONFIDENCE)
        arm["uplift"] = _comparison(
            uplift.estimate,
            uplift.interval.lower if uplift.interval else None,
            uplift.interval.upper if uplift.interval else None,
            uplift.message,
        )
        if control_stats.users and stats.users:
            estimate, lower, upper = difference_confidence_sequence(
                control_stats.successes, control_stats.users, stats.successes, stats.users,
                alpha=1.0 - CONFIDENCE, target_samples=target_samples,
            )
            arm["difference"] = _comparison(float(estimate), None, None, "", (float(lower), float(upper)))
        else:
            arm["difference"] = _comparison(None, None, None, "no users yet in control or variant")


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

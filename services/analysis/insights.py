"""SIRA insights: the seed's posterior summary, a recommendation, fail-fast and guardrail
status, and suggested next experiments (including per-segment follow-ups).

The segment breakdown is the one read here that is not a rollup: one ``GROUP BY
GROUPING SETS`` over the experiment's assignments joined to the per-user rollups
of the primary metric (by primary key).  Its cost grows with the number of
assigned users, not of events.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models import Recommendation
from models.enums import LOWER_IS_BETTER
from sira import insights as sira_insights
from sira.bandit import posteriors
from sira.failfast import stratified_confidence_sequence
from sira.insights import SegmentSummary, VariantSummary
from sira.posterior import prob_best
from sira.stats import ProportionStats, wilson_interval

from .findings import FAIL_FAST, GUARDRAIL_BREACH, Finding, fail_fast_findings, guardrail_findings
from .inputs import ExperimentInput
from .results import decision_proportions, load_experiment, srm_block

SEGMENT_DIMENSIONS = ("country", "lang", "device")

_SEGMENTS = text(
    """
    SELECT grouping(a.country) AS without_country, grouping(a.lang) AS without_lang,
           grouping(a.device) AS without_device,
           a.country, a.lang, a.device, a.variant_id,
           count(*) AS users, count(u.molam_id) AS with_event
    FROM experiment_assignments a
    LEFT JOIN experiment_user_rollups u
           ON u.experiment_id = a.experiment_id AND u.molam_id = a.molam_id AND u.event_type = :event_type
    WHERE a.experiment_id = :experiment_id
    GROUP BY GROUPING SETS ((a.country, a.variant_id), (a.lang, a.variant_id), (a.device, a.variant_id))
    """
)


def segment_summaries(session: Session, experiment: ExperimentInput) -> list[SegmentSummary]:
    """Per (dimension, value, variant) users and successes on the primary metric.

    Successes follow SIRA's decision convention (users *without* the event when fewer
    is better).  Users whose request carried no value for a dimension are left out of
    that dimension.
    """
    names = {arm.variant_id: arm.name for arm in experiment.arms}
    harmful = experiment.primary_metric in LOWER_IS_BETTER
    summaries = []
    rows = session.execute(_SEGMENTS, {"experiment_id": experiment.id, "event_type": experiment.primary_metric})
    for row in rows:
        dimension = next(d for d in SEGMENT_DIMENSIONS if not getattr(row, f"without_{d}"))
        value = getattr(row, dimension)
        if value is None or row.variant_id not in names:
            continue
        users, with_event = int(row.users), int(row.with_event)
        summaries.append(
            SegmentSummary(
                key=dimension,
                value=value,
                variant=names[row.variant_id],
                users=users,
                successes=users - with_event if harmful else with_event,
            )
        )
    return summaries


def _finding_json(experiment: ExperimentInput, finding: Finding) -> dict[str, Any]:
    arm = experiment.arms[finding.variant_index]
    return {
        "variant_id": str(arm.variant_id),
        "variant": arm.name,
        "kind": finding.kind,
        "rule": finding.rule,
        "event_type": finding.event_type,
        "action": finding.action,
        "message": finding.message,
        "lower": finding.details.get("lower"),
        "upper": finding.details.get("upper"),
        "probability": finding.details.get("probability"),
    }


def _recorded(session: Session, experiment_id: uuid.UUID, kind: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Recommendation)
        .where(Recommendation.experiment_id == experiment_id, Recommendation.kind == kind)
        .order_by(Recommendation.created_at, Recommendation.id)
    ).scalars()
    return [
        {
            "id": str(r.id),
            "variant_id": str(r.variant_id),
            "rule": r.rule,
            "event_type": r.event_type,
            "action": r.action,
            "message": r.message,
            "outcome": (r.details or {}).get("action_outcome"),
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]


def fail_fast_status(session: Session, experiment: ExperimentInput) -> dict[str, Any]:
    config = experiment.fail_fast_config
    return {
        "rule": config.rule,
        "min_samples": config.min_samples,
        "threshold": config.threshold,
        "alpha": config.alpha,
        "action": experiment.fail_fast_action,
        "flags": [_finding_json(experiment, f) for f in fail_fast_findings(experiment)],
        "recommendations": _recorded(session, experiment.id, FAIL_FAST),
    }


def guardrail_status(session: Session, experiment: ExperimentInput) -> dict[str, Any]:
    return {
        "event_types": experiment.guardrail_event_types,
        "action": experiment.guardrail_action,
        "flags": [_finding_json(experiment, f) for f in guardrail_findings(experiment)],
        "recommendations": _recorded(session, experiment.id, GUARDRAIL_BREACH),
    }


def posterior_summary(experiment: ExperimentInput) -> list[dict[str, Any]]:
    """The seed's ``insights`` list: per variant its rate, samples, 95% interval, α, β, P(best)."""
    raw = experiment.proportions(experiment.primary_metric)
    decision = decision_proportions(experiment)
    alphas, betas = posteriors(decision)
    best: np.ndarray | list[float] = prob_best(alphas, betas) if experiment.arms else []
    summary = []
    for i, arm in enumerate(experiment.arms):
        interval = wilson_interval(raw[i].successes, raw[i].users)
        summary.append(
            {
                "variant": arm.name,
                "variant_id": str(arm.variant_id),
                "is_control": arm.is_control,
                "paused": arm.paused,
                "conversion_rate": raw[i].rate,
                "samples": raw[i].users,
                "successes": raw[i].successes,
                "confidence_interval": {"lower": interval.lower, "upper": interval.upper},
                "alpha": float(alphas[i]),
                "beta": float(betas[i]),
                "prob_best": float(best[i]),
            }
        )
    return summary


def build_insights(session: Session, experiment: ExperimentInput, now: datetime) -> dict[str, Any]:
    summary = posterior_summary(experiment)
    decision = decision_proportions(experiment)
    min_samples = experiment.fail_fast_config.min_samples

    # Always-valid bound on each variant's gap to control (decision scale, stratified),
    # alpha split over the variants, for the roll-out suggestion.
    table = experiment.decision_table()
    control_index = experiment.control_index
    variant_count = max(len(experiment.arms) - 1, 1)
    config = experiment.fail_fast_config
    always_valid = {
        i: stratified_confidence_sequence(table, control_index, i, config.alpha / variant_count, config.target_samples)[1]
        for i in range(len(experiment.arms))
        if i != control_index
    }

    def summaries(proportions: list[ProportionStats]) -> list[VariantSummary]:
        return [
            VariantSummary(
                name=arm.name, config=arm.config, is_control=arm.is_control,
                users=p.users, successes=p.successes, prob_best=item["prob_best"],
                always_valid_lower=always_valid.get(i),
            )
            for i, (arm, p, item) in enumerate(zip(experiment.arms, proportions, summary))
        ]

    # The sentence quotes the metric's own rate; the suggestions compare arms on
    # the decision scale (success = the good outcome), like the bandit does.
    recommendation = sira_insights.recommendation(
        summaries(experiment.proportions(experiment.primary_metric)), min_samples=min_samples, metric=experiment.primary_metric
    )
    suggestions = sira_insights.suggestions(
        summaries(decision),
        segment_summaries(session, experiment),
        min_samples=min_samples,
        lower_is_better=experiment.primary_metric in LOWER_IS_BETTER,
    )
    return {
        "experiment_id": str(experiment.id),
        "primary_metric": experiment.primary_metric,
        "insights": summary,
        "recommendation": recommendation,
        "fail_fast": fail_fast_status(session, experiment),
        "guardrails": guardrail_status(session, experiment),
        "suggestions": suggestions,
        "srm": srm_block(experiment),
        "computed_at": now.isoformat(),
    }


def experiment_insights(session: Session, experiment_id: uuid.UUID, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    return build_insights(session, load_experiment(session, experiment_id), now)

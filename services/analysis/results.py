"""Experiment results: rates, intervals, uplift, posteriors and SRM from the rollups.

Served from three cheap reads (rollups, assigned-user counts, stored bandit state;
see :mod:`services.analysis.inputs`) plus day-7 retention, which needs a join over the
experiment's users and is therefore cached in Redis and refreshed by the
``sira.recompute_posteriors`` job (see :func:`d7_retention_counts`).  Nothing here
reads raw events, so the cost of a results call does not grow with their number.

Definitions (``docs/statistics.md``): every rate is per *assigned* user; a success is
a distinct user with at least one event of the type; value means are per assigned
user with users without events counting as 0.  For event types where fewer is
better (refunds, churn, fraud alerts), "beating" control and being "best" mean a
*lower* rate; SIRA's posteriors on such a primary metric count the users *without*
the event as successes, so the bandit and fail-fast favour the arm with fewer.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import redis
from sqlalchemy import String, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from core.errors import NotFound
from models import BanditState
from models.enums import EVENT_TYPES, LOWER_IS_BETTER, ExperimentMode
from sira.bandit import live_effective, posteriors
from sira.compare import compare_rates
from sira.posterior import prob_beat_control, prob_best
from sira.srm import srm_test, srm_test_periods
from sira.stats import (
    Comparison,
    Interval,
    ProportionStats,
    beta_credible_interval,
    d7_retention,
    mean_interval,
    relative_uplift,
    wilson_interval,
)

from ..cache import d7_key
from . import revenue
from .inputs import ExperimentInput, load_inputs

log = logging.getLogger(__name__)

D7_KEY_TTL = timedelta(hours=6)
D7_REFRESH_AFTER = timedelta(hours=1)
RETENTION_DAYS = 7


def decision_proportions(experiment: ExperimentInput) -> list[ProportionStats]:
    """The primary metric as SIRA decides on it (success = the good outcome): matured
    users only, period-stratified (the raw counts for one period without windows)."""
    return live_effective(experiment.decision_table(), experiment.paused)


def _interval(interval: Interval | None) -> dict[str, float] | None:
    if interval is None:
        return None
    return {"lower": interval.lower, "upper": interval.upper}


def _comparison(comparison: Comparison) -> dict[str, Any]:
    return {
        "estimate": comparison.estimate,
        "lower": comparison.lower,
        "upper": comparison.upper,
        "always_valid_lower": comparison.always_valid_lower,
        "always_valid_upper": comparison.always_valid_upper,
        "message": comparison.message,
    }


def _beats_control(control: ProportionStats, variant: ProportionStats, lower_is_better: bool) -> float:
    """P(variant's rate is better than control's) under Beta(s + 1, f + 1) posteriors."""
    p_higher = prob_beat_control(control.successes + 1, control.failures + 1, variant.successes + 1, variant.failures + 1)
    return 1.0 - p_higher if lower_is_better else p_higher


def _metric_block(experiment: ExperimentInput, index: int, event_type: str) -> dict[str, Any]:
    """One arm's numbers for one event type.

    ``rate`` and its intervals are over all users so far, period-stratified when the
    split changed (:mod:`sira.strata`); ``matured_users`` are the users whose
    attribution window has closed, the ones the bandit and fail-fast count.
    """
    arm = experiment.arms[index]
    counts = arm.counts(event_type)
    table = experiment.table(event_type)
    proportion = table.effective(shared=False)[index]
    sample = arm.value_sample(event_type)
    block: dict[str, Any] = {
        "users": counts.users,
        "events": counts.events,
        "rate": proportion.rate,
        "matured_users": experiment.matured_users(event_type)[index],
        "interval": _interval(wilson_interval(proportion.successes, proportion.users)),
        "credible_interval": _interval(beta_credible_interval(proportion.successes, proportion.users)),
        "value_count": counts.value_count,
        "value_sum": counts.value_sum,
        "value_mean": sample.mean,
        "value_interval": _interval(mean_interval(sample)) if sample.n >= 2 else None,
        "difference": None,
        "uplift": None,
        "value_uplift": None,
        "prob_beat_control": None,
    }
    control_index = experiment.control_index
    if index != control_index:
        control = experiment.arms[control_index]
        # The pair over the periods both arms share, so they are compared over the same time.
        control_pair, variant_pair = table.select([control_index, index]).effective()
        difference, uplift = compare_rates(table, control_index, index)
        block["difference"] = _comparison(difference)
        block["uplift"] = _comparison(uplift)
        value_uplift = relative_uplift(control.value_sample(event_type), sample)
        block["value_uplift"] = {
            "estimate": value_uplift.estimate,
            "lower": value_uplift.interval.lower if value_uplift.interval else None,
            "upper": value_uplift.interval.upper if value_uplift.interval else None,
            "message": value_uplift.message,
        }
        if control.assigned_users and arm.assigned_users:
            block["prob_beat_control"] = _beats_control(control_pair, variant_pair, event_type in LOWER_IS_BETTER)
    return block


@dataclass(frozen=True)
class StoredState:
    weight: float
    prob_best: float
    burn_in: bool
    computed_at: datetime


def load_states(session: Session, experiment_id: uuid.UUID) -> dict[uuid.UUID, StoredState]:
    rows = session.execute(
        select(BanditState.variant_id, BanditState.weight, BanditState.prob_best, BanditState.burn_in, BanditState.computed_at)
        .where(BanditState.experiment_id == experiment_id)
    )
    return {row.variant_id: StoredState(row.weight, row.prob_best, row.burn_in, row.computed_at) for row in rows}


def current_weights(experiment: ExperimentInput, states: dict[uuid.UUID, StoredState]) -> list[float]:
    """The share of new users each arm receives now.

    A fixed split uses the configured shares over the arms not paused.  A bandit uses
    the weights last published by ``sira.recompute_posteriors`` (the configured shares
    until the first publication); an arm paused since then gets 0 at once because the
    assignment path skips paused arms.
    """
    shares = experiment.active_shares()
    if experiment.mode != ExperimentMode.BANDIT.value or not all(arm.variant_id in states for arm in experiment.arms):
        return shares
    return [0.0 if arm.paused else states[arm.variant_id].weight for arm in experiment.arms]


def srm_block(experiment: ExperimentInput) -> dict[str, Any]:
    """SRM against the probabilities logged per allocation period (bandits and pauses
    included); without logged probabilities, against the configured shares."""
    users, probability = experiment.period_users, experiment.period_probability
    if users is not None and probability is not None and experiment.periods and (
        experiment.periods > 1 or not np.isnan(probability).all()
    ):
        result = srm_test_periods(users, probability, experiment.traffic_shares)
        return {
            "chi2": float(result.chi2),
            "p_value": float(result.p_value),
            "flagged": bool(result.flagged),
            "message": result.message,
        }
    if experiment.mode == ExperimentMode.BANDIT.value:
        return {"chi2": None, "p_value": None, "flagged": False,
                "message": "not applicable: a bandit changes the split on purpose"}
    if any(experiment.paused):
        return {"chi2": None, "p_value": None, "flagged": False,
                "message": "not applicable while a variant is paused: the split no longer follows the shares"}
    result = srm_test([arm.assigned_users for arm in experiment.arms], experiment.traffic_shares)
    return {"chi2": result.chi2, "p_value": result.p_value, "flagged": result.flagged, "message": result.message}


# --- Day-7 retention -------------------------------------------------------------

#: Event types that show a user came back (a refund or a fraud alert does not).
ENGAGEMENT_EVENTS = ("view", "click", "conversion")

# Retained = at least one engagement event in [assigned_at + 7 days, assigned_at + 8 days).
# The raw events are needed (the per-user rollups only keep the first and last event);
# the scan is bounded by the experiment's engagement events of eligible users, runs at
# most hourly per experiment (cached) and joins the assignments by their unique key.
_D7_QUERY = text(
    """
    WITH eligible AS (
        SELECT experiment_id, molam_id, variant_id, assigned_at
        FROM experiment_assignments
        WHERE experiment_id = ANY(:experiment_ids) AND assigned_at <= :cutoff
    ), active AS (
        SELECT DISTINCT e.experiment_id, e.molam_id
        FROM experiment_metrics m
        JOIN eligible e ON e.experiment_id = m.experiment_id AND e.molam_id = m.molam_id
        WHERE m.experiment_id = ANY(:experiment_ids)
          AND m.event_type = ANY(:event_types)
          AND m.occurred_at >= e.assigned_at + make_interval(days => :days)
          AND m.occurred_at < e.assigned_at + make_interval(days => :days + 1)
    )
    SELECT e.experiment_id, e.variant_id, count(*) AS eligible, count(a.molam_id) AS retained
    FROM eligible e
    LEFT JOIN active a ON a.experiment_id = e.experiment_id AND a.molam_id = e.molam_id
    GROUP BY e.experiment_id, e.variant_id
    """
).bindparams(
    bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("event_types", type_=ARRAY(String)),
)


def compute_d7(
    session: Session, experiments: list[ExperimentInput], now: datetime
) -> dict[uuid.UUID, dict[str, list[int]]]:
    """{experiment: {variant: [eligible, retained]}} from assignments and raw events.

    D7 retention: among users assigned at least 8 days ago (so that their whole day 7
    is over), the share with an engagement event (view, click, conversion) in the 24
    hours starting 7 days after their own assignment.  Experiments first started less
    than 8 days ago cannot have an eligible user yet, so the query is skipped for them.
    """
    cutoff = now - timedelta(days=RETENTION_DAYS + 1)
    result = {e.id: {str(arm.variant_id): [0, 0] for arm in e.arms} for e in experiments}
    old_enough = [e.id for e in experiments if e.started_at is not None and e.started_at <= cutoff]
    if old_enough:
        rows = session.execute(
            _D7_QUERY,
            {"experiment_ids": old_enough, "cutoff": cutoff, "days": RETENTION_DAYS,
             "event_types": list(ENGAGEMENT_EVENTS)},
        )
        for row in rows:
            result[row.experiment_id][str(row.variant_id)] = [int(row.eligible), int(row.retained)]
    return result


def store_d7(client: redis.Redis, counts: dict[uuid.UUID, dict[str, list[int]]], now: datetime) -> None:
    pipe = client.pipeline(transaction=False)
    for experiment_id, variants in counts.items():
        document = {"computed_at": now.isoformat(), "variants": variants}
        pipe.set(d7_key(experiment_id), json.dumps(document), ex=int(D7_KEY_TTL.total_seconds()))
    pipe.execute()


def read_d7(client: redis.Redis | None, experiment_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any] | None]:
    if client is None or not experiment_ids:
        return {i: None for i in experiment_ids}
    try:
        raw = client.mget([d7_key(i) for i in experiment_ids])
    except redis.RedisError as exc:
        log.warning("could not read cached D7 retention: %s", exc)
        return {i: None for i in experiment_ids}
    return {i: _d7_document(value) for i, value in zip(experiment_ids, raw)}


def _d7_document(raw: bytes | None) -> dict[str, Any] | None:
    """A cached D7 document, or None when missing or not in the expected shape."""
    if not raw:
        return None
    try:
        document = json.loads(raw)
        datetime.fromisoformat(document["computed_at"])
        if isinstance(document["variants"], dict):
            return document
    except (ValueError, TypeError, KeyError):
        pass
    log.warning("ignoring a malformed cached D7 document")
    return None


def d7_retention_counts(
    session: Session, client: redis.Redis | None, experiment: ExperimentInput, now: datetime
) -> dict[str, Any]:
    """Cached D7 counts for one experiment, computed (and cached) on a miss."""
    cached = read_d7(client, [experiment.id])[experiment.id]
    if cached is not None and all(str(arm.variant_id) in cached["variants"] for arm in experiment.arms):
        return cached
    counts = compute_d7(session, [experiment], now)
    if client is not None:
        try:
            store_d7(client, counts, now)
        except redis.RedisError as exc:
            log.warning("could not cache D7 retention of %s: %s", experiment.id, exc)
    return {"computed_at": now.isoformat(), "variants": counts[experiment.id]}


def _d7_block(counts: list[int]) -> dict[str, Any]:
    eligible, retained = counts
    retention = d7_retention(eligible, min(retained, eligible))
    return {
        "eligible": eligible,
        "retained": retention.successes,
        "rate": retention.rate if eligible else None,
        "interval": _interval(wilson_interval(retention.successes, eligible)) if eligible else None,
    }


# --- Results ---------------------------------------------------------------------

def build_results(
    experiment: ExperimentInput,
    states: dict[uuid.UUID, StoredState],
    d7: dict[str, Any] | None,
    now: datetime,
    money: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results document (pure: everything it needs is passed in).

    ``money`` is :func:`services.analysis.revenue.money_results`: each money-carrying
    event type's metrics gain a ``revenue`` block, the conversion metrics a ``cuped``
    block, and each variant ``net_revenue`` and ``ratios``.
    """
    decision = decision_proportions(experiment)
    alphas, betas = posteriors(decision)
    best: np.ndarray | list[float] = prob_best(alphas, betas) if experiment.arms else []
    weights = current_weights(experiment, states)
    variants = []
    for index, arm in enumerate(experiment.arms):
        d7_counts = (d7 or {}).get("variants", {}).get(str(arm.variant_id)) if d7 else None
        variants.append(
            {
                "variant_id": str(arm.variant_id),
                "name": arm.name,
                "is_control": arm.is_control,
                "config": arm.config,
                "traffic_share": arm.traffic_share,
                "assigned_users": arm.assigned_users,
                "weight": weights[index],
                "paused": arm.paused,
                "metrics": {event_type: _metric_block(experiment, index, event_type) for event_type in EVENT_TYPES},
                "prob_best": float(best[index]),
                "alpha": float(alphas[index]),
                "beta": float(betas[index]),
                "d7_retention": _d7_block(d7_counts) if d7_counts is not None else None,
            }
        )
        if money is not None:
            _add_money(variants[-1], money["variants"].get(str(arm.variant_id), {}))
    state_times = [s.computed_at for s in states.values()]
    return {
        "experiment_id": str(experiment.id),
        "name": experiment.name,
        "status": experiment.status,
        "mode": experiment.mode,
        "primary_metric": experiment.primary_metric,
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "variants": variants,
        "periods": experiment.periods,
        "attribution_window_s": experiment.windows,
        "srm": srm_block(experiment),
        "d7_computed_at": d7.get("computed_at") if d7 else None,
        "bandit_computed_at": max(state_times).isoformat() if state_times else None,
        "burn_in": any(s.burn_in for s in states.values()) if states else None,
        "computed_at": now.isoformat(),
        **(
            {
                "reporting_currency": money["reporting_currency"],
                "value_cap_percentile": money["value_cap_percentile"],
                "cuped_covariate_users": money["covariate"],
            }
            if money is not None
            else {}
        ),
    }


def _add_money(variant: dict[str, Any], money: dict[str, Any]) -> None:
    for event_type, block in money.get("revenue", {}).items():
        variant["metrics"][event_type]["revenue"] = block
    if "conversion_cuped" in money:
        variant["metrics"]["conversion"]["cuped"] = money["conversion_cuped"]
    variant["net_revenue"] = money.get("net_revenue")
    variant["ratios"] = money.get("ratios")


def load_experiment(session: Session, experiment_id: uuid.UUID, now: datetime | None = None) -> ExperimentInput:
    found = load_inputs(session, [experiment_id], now=now)
    if not found:
        raise NotFound(f"experiment {experiment_id} not found")
    return found[0]


def experiment_results(
    session: Session, client: redis.Redis | None, experiment_id: uuid.UUID, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    experiment = load_experiment(session, experiment_id, now)
    d7 = d7_retention_counts(session, client, experiment, now)
    money = revenue.money_results(session, experiment)
    return build_results(experiment, load_states(session, experiment_id), d7, now, money)

"""Who gets which arm: the fixed split, the bandit's draw and eligibility (pure functions of a definition).

Fixed split (documented in docs/assignment.md)::

    bucket   = int.from_bytes(sha256(f"{experiment_id}:{molam_id}").digest()[:8], "big") % 10_000
    coverage = int.from_bytes(sha256(f"coverage:{experiment_id}:{molam_id}").digest()[:8], "big") % 10_000

A user is enrolled when ``coverage < experiment.coverage * 100``; the variant is the
one whose slice of the cumulative traffic shares (in hundredths of a percent, so
exactly 10,000 buckets) contains ``bucket``. Paused arms are skipped and the other
shares renormalised. Any process computes the same answer without coordination.

Nothing here reads Redis or PostgreSQL: the service (:mod:`.service`) hands in the
definition, the user and the published bandit weights it already read.
"""
from __future__ import annotations

import bisect
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from models.enums import TARGETING_LIST_KEYS, ExperimentMode
from sira.bandit import draw_arm

from ..buckets import BUCKETS, coverage_bucket, holdout_bucket, layer_bucket, percent_to_buckets, split_bucket
from ..definitions import Definition, VariantDefinition

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UserContext:
    """What the calling product knows about the user at assignment time."""

    molam_id: str
    country: str | None = None
    lang: str | None = None
    currency: str | None = None
    region: str | None = None
    device: str | None = None
    txn_count: int | None = None
    # Known before exposure (e.g. last-30-day spend in the reporting currency): CUPED's covariate.
    pre_exposure_value: float | None = None


# --- hashing and the split -------------------------------------------------------------


def _hundredths(value: float) -> int:
    return int(round(value * 100))


def period_id(version: int, weights_period: int) -> int:
    """The allocation period an assignment is made in: (definition version, published weights).

    Every change of the split changes one of the two: a pause, a resume or a restart
    bumps the experiment's version, and each replacement of a bandit's weights bumps
    the ``period`` SIRA publishes with them (0 while the configured shares apply).
    Ordering by the id is chronological.
    """
    return (version << 32) | weights_period


def in_coverage(definition: Definition, molam_id: str) -> bool:
    threshold = _hundredths(definition.coverage)
    return threshold >= BUCKETS or coverage_bucket(definition.id, molam_id) < threshold


def split_boundaries(definition: Definition) -> tuple[tuple[int, ...], tuple[VariantDefinition, ...]]:
    """Upper bucket bounds of each active arm, memoised on the (immutable) definition."""
    cached = definition.derived.get("split")
    if cached is not None:
        return cached
    active = definition.active_variants
    shares = [_hundredths(v.traffic_share) for v in active]
    if sum(shares) <= 0:
        # Every remaining arm has a zero share: split evenly rather than refuse users.
        shares = [1] * len(active)
    total = sum(shares)
    bounds, running = [], 0
    for share in shares:
        running += share
        bounds.append(running * BUCKETS // total)
    result = (tuple(bounds), active)
    definition.derived["split"] = result
    return result


def variant_for_bucket(definition: Definition, bucket: int) -> VariantDefinition:
    bounds, active = split_boundaries(definition)
    return active[bisect.bisect_right(bounds, bucket)]


def split_probability(definition: Definition, variant: VariantDefinition) -> float:
    """The share of buckets the fixed split gives ``variant`` (its assignment probability)."""
    probabilities = definition.derived.get("split_probability")
    if probabilities is None:
        bounds, active = split_boundaries(definition)
        lower = (0,) + bounds[:-1]
        probabilities = {v.id: (upper - low) / BUCKETS for v, low, upper in zip(active, lower, bounds)}
        definition.derived["split_probability"] = probabilities
    return probabilities[variant.id]


def draw_weights(
    definition: Definition, published: dict[str, Any] | None
) -> tuple[list[tuple[VariantDefinition, float]], int]:
    """(draw weight per active arm, weights period) for a bandit's next draw.

    SIRA's published P(best) once it has left burn-in (the published period), else the
    traffic shares (period 0); arms paused in the definition get nothing whatever SIRA
    published.
    """
    active = definition.active_variants
    if published and not published.get("burn_in"):
        weights = published.get("weights") or {}
        drawn = []
        for variant in active:
            try:
                weight = float(weights.get(variant.id, 0.0))
            except (TypeError, ValueError):
                weight = 0.0
            drawn.append((variant, weight if math.isfinite(weight) and weight > 0 else 0.0))
        if sum(w for _, w in drawn) > 0:
            period = published.get("period")
            return drawn, period if isinstance(period, int) and 0 < period < 1 << 32 else 0
    shares = [(v, float(_hundredths(v.traffic_share))) for v in active]
    if sum(w for _, w in shares) <= 0:
        return [(v, 1.0) for v in active], 0
    return shares, 0


def choose(definition: Definition, molam_id: str, raw_weights: bytes | None) -> tuple[VariantDefinition, float, int]:
    """(variant, probability it had of being chosen, allocation period)."""
    if definition.mode == ExperimentMode.BANDIT.value:
        weights, weights_period = draw_weights(definition, _published_weights(raw_weights, definition.id))
        variant = weights[draw_arm([w for _, w in weights], random.random)][0]
        total = sum(w for _, w in weights)
        probability = next(w for v, w in weights if v is variant) / total
        return variant, probability, period_id(definition.version, weights_period)
    variant = variant_for_bucket(definition, split_bucket(definition.id, molam_id))
    return variant, split_probability(definition, variant), period_id(definition.version, 0)


def _published_weights(raw: bytes | None, experiment_id: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        published = json.loads(raw)
    except ValueError:
        log.warning("ignoring malformed bandit weights for %s", experiment_id)
        return None
    return published if isinstance(published, dict) else None


# --- eligibility -----------------------------------------------------------------------


def targeting_reason(definition: Definition, user: UserContext) -> str | None:
    """Why the request does not match the targeting, or None when it does.

    A list in the targeting is a whitelist; a request that omits an attribute the
    experiment targets on cannot be shown to match it.
    """
    targeting = definition.targeting
    if not targeting:
        return None
    for key in TARGETING_LIST_KEYS:
        allowed = targeting.get(key)
        if allowed:
            value = getattr(user, key)
            if value is None:
                return f"{key}_missing"
            if value not in allowed:
                return f"{key}_not_targeted"
    min_txn = targeting.get("min_txn")
    if min_txn:
        if user.txn_count is None:
            return "txn_count_missing"
        if user.txn_count < min_txn:
            return "below_min_txn"
    return None


def outside_layer(definition: Definition, molam_id: str) -> bool:
    """True when the user's layer bucket is not in the experiment's range (or it has none)."""
    if definition.layer_id is None:
        return False
    if definition.layer_range is None:
        return True
    start, end = definition.layer_range
    return not start <= layer_bucket(definition.layer_id, molam_id) < end


def holdouts_of(definition: Definition, molam_id: str) -> list[str]:
    """The experiment's holdouts that keep this user out."""
    return [
        holdout_id
        for holdout_id, percent in definition.holdouts
        if holdout_bucket(holdout_id, molam_id) < percent_to_buckets(percent)
    ]

"""Recommendation text and follow-up suggestions built from per-variant summaries.

Pure functions over plain summaries so the API (and its tests) decide where the
numbers come from; every threshold is an argument with the default the dashboard
uses.  Suggestions are dictionaries, ready to serialise, each with a ``kind``:

* ``roll_out_and_iterate``: one variant is the clear winner (best with probability
  ≥ 0.95 and an always-valid bound on its gap to control above 0, so peeking cannot
  manufacture it); roll it out and test further values of the configuration keys
  that made the difference;
* ``extend_or_cut``: nothing has won and the arms are too small to see a 10%
  relative uplift; say how many more users that needs, and which arms are so far
  behind that cutting them would speed up the rest;
* ``targeted_follow_up``: a variant wins in one segment (a country, say) but not in
  another; suggest a follow-up targeted at the segment where it wins.  A win must
  survive Benjamini–Hochberg at 5% over every segment × variant comparison: with 18
  segment values and one variant, an uncorrected 0.95 threshold suggests a follow-up
  in most A/A experiments.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import special, stats

from sira.failfast import FailFastConfig, difference_confidence_sequence
from sira.posterior import prob_beat_control
from sira.stats import required_sample_size

__all__ = ["SegmentSummary", "VariantSummary", "recommendation", "suggestions"]


@dataclass(frozen=True)
class VariantSummary:
    """What the insights need to know about one variant."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    is_control: bool = False
    users: int = 0
    successes: int = 0
    prob_best: float = 0.0
    # Always-valid lower bound on (rate - control's rate), success = the good outcome,
    # at the level the roll-out needs (alpha split over the variants); None: computed
    # here from ``users`` and ``successes``.
    always_valid_lower: float | None = None

    @property
    def rate(self) -> float:
        return self.successes / self.users if self.users else 0.0


@dataclass(frozen=True)
class SegmentSummary:
    """One variant's counts within one segment value, e.g. country = "SN".

    ``variant`` is the variant's name, as in ``VariantSummary.name``.  One row per
    (key, value, variant), which is what a GROUP BY over assignments produces.
    """

    key: str
    value: str
    variant: str
    users: int
    successes: int


def _control(variants: Sequence[VariantSummary]) -> VariantSummary | None:
    return next((v for v in variants if v.is_control), None)


def recommendation(
    variants: Sequence[VariantSummary], min_samples: int = 100, metric: str = "conversion"
) -> str:
    """One sentence for the dashboard: who is leading, or why it is too early to say."""
    if not variants:
        return "No variants to analyse yet."
    smallest = min(v.users for v in variants)
    if smallest < min_samples:
        return (
            f"Not enough data yet: every variant needs at least {min_samples:,} users "
            f"(the smallest has {smallest:,})."
        )
    leader = max(variants, key=lambda v: v.prob_best)
    return (
        f"Variant '{leader.name}' is currently leading with {leader.rate:.2%} {metric} "
        f"(probability of being best: {leader.prob_best:.1%})"
    )


def _changed_config(winner: VariantSummary, others: Sequence[VariantSummary]) -> dict[str, Any]:
    """Config keys whose value in the winner differs from the control (or, without a
    control, from any other variant), with both values."""
    changed = {}
    for other in others:
        for key in sorted(set(winner.config) | set(other.config)):
            if key not in changed and winner.config.get(key) != other.config.get(key):
                changed[key] = {"control": other.config.get(key), "variant": winner.config.get(key)}
    return changed


def _always_valid_lower(winner: VariantSummary, control: VariantSummary, alpha: float) -> float:
    if winner.always_valid_lower is not None:
        return winner.always_valid_lower
    _, lower, _ = difference_confidence_sequence(
        control.successes, control.users, winner.successes, winner.users, alpha, FailFastConfig.target_samples
    )
    return float(lower)


def _roll_out(
    variants: Sequence[VariantSummary], control: VariantSummary | None, win_probability: float, alpha: float
) -> list[dict[str, Any]]:
    """Roll out the leader only when it is best with ``win_probability`` *and* its
    always-valid bound on the gap to control is above 0 (alpha split over the
    variants): the dashboard is watched continuously, so the fixed-horizon posterior
    alone would suggest rolling out an A/A winner far more often than 5%."""
    winner = max(variants, key=lambda v: v.prob_best)
    if winner.is_control or winner.prob_best < win_probability:
        return []
    if control is not None:
        variant_count = max(sum(1 for v in variants if not v.is_control), 1)
        if _always_valid_lower(winner, control, alpha / variant_count) <= 0.0:
            return []
    others = [control] if control else [v for v in variants if v is not winner]
    changed = _changed_config(winner, others)
    if changed:
        changes = ", ".join(
            f"{key} ({values['control']!r} -> {values['variant']!r})"
            for key, values in changed.items()
        )
        keys = "this key" if len(changed) == 1 else "these keys"
        iterate = f"then iterate on {changes}: test further values of {keys}"
    else:
        iterate = "its configuration equals the control's, so check what else changed"
    baseline = f" vs {control.rate:.2%} for control" if control else ""
    return [
        {
            "kind": "roll_out_and_iterate",
            "title": f"Roll out '{winner.name}'",
            "detail": (
                f"'{winner.name}' is best with probability {winner.prob_best:.1%} "
                f"({winner.rate:.2%}{baseline}). Roll it out, {iterate}."
            ),
            "variant": winner.name,
            "prob_best": winner.prob_best,
            "changed_config": changed,
        }
    ]


def _extend_or_cut(
    variants: Sequence[VariantSummary],
    control: VariantSummary | None,
    cut_probability: float,
    target_uplift: float,
    alpha: float,
    power: float,
    min_samples: int,
    lower_is_better: bool = False,
) -> list[dict[str, Any]]:
    """Sample-size advice on the metric's own rate.  Summaries are on the decision scale
    (success = the good outcome), so for a metric where fewer is better (churn) the
    event rate is 1 − the success rate and the effect to plan for is a relative
    *reduction* of it."""
    parts = []
    required = additional = None
    def events(v: VariantSummary) -> int:
        return v.users - v.successes if lower_is_better else v.successes

    base = control if control and events(control) else None
    base_rate = events(base) / base.users if base else (
        sum(events(v) for v in variants) / max(sum(v.users for v in variants), 1)
    )
    change = -target_uplift if lower_is_better else target_uplift
    try:
        required = required_sample_size(base_rate, change, alpha, power)
    except ValueError:
        required = None  # no events yet (or a rate too close to 1 to plan for)
    if required is not None:
        additional = max(required - min(v.users for v in variants), 0)
        if additional:
            effect = "reduction" if lower_is_better else "uplift"
            parts.append(
                f"To see a {target_uplift:.0%} relative {effect} on a {base_rate:.2%} base rate "
                f"with {power:.0%} power, each arm needs about {required:,} users: about "
                f"{additional:,} more per arm."
            )
    cut = []
    if len(variants) > 2:
        cut = [
            v.name
            for v in variants
            if not v.is_control and v.users >= min_samples and v.prob_best < cut_probability
        ]
        if cut:
            names = ", ".join(f"'{name}'" for name in cut)
            has, it = ("has", "it") if len(cut) == 1 else ("have", "them")
            parts.append(
                f"{names} {has} less than a {cut_probability:.0%} chance of being best; "
                f"cutting {it} sends the traffic to the arms still in contention."
            )
    if not parts:
        return []
    title = "Extend the experiment" if additional else "Cut arms that cannot win"
    if additional and cut:
        title = "Extend the experiment and cut arms that cannot win"
    return [
        {
            "kind": "extend_or_cut",
            "title": title,
            "detail": " ".join(parts),
            "required_users_per_arm": required,
            "additional_users_per_arm": additional,
            "cut": cut,
        }
    ]


def _two_proportion_p_value(control: tuple[int, int], variant: tuple[int, int]) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    (n_c, s_c), (n_v, s_v) = control, variant
    pooled = (s_c + s_v) / (n_c + n_v)
    variance = pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_v)
    if variance <= 0:
        return 1.0
    z = (s_v / n_v - s_c / n_c) / math.sqrt(variance)
    return float(2.0 * special.ndtr(-abs(z)))


def _segment_discoveries(
    counts: dict[tuple[str, str], dict[str, tuple[int, int]]],
    variants: Sequence[VariantSummary],
    control: VariantSummary,
    min_samples: int,
    fdr: float,
) -> set[tuple[str, str, str]]:
    """(key, value, variant) where the variant beats control after Benjamini–Hochberg
    at ``fdr`` over every segment × variant comparison made."""
    tests = []
    for (key, value), by_variant in counts.items():
        c = by_variant.get(control.name)
        if not c or c[0] < min_samples:
            continue
        for variant in variants:
            v = by_variant.get(variant.name)
            if variant.is_control or not v or v[0] < min_samples:
                continue
            better = v[1] / v[0] > c[1] / c[0]
            tests.append(((key, value, variant.name), _two_proportion_p_value(c, v), better))
    if not tests:
        return set()
    adjusted = stats.false_discovery_control([p for _, p, _ in tests], method="bh")
    return {name for (name, _, better), q in zip(tests, adjusted) if better and q <= fdr}


def _targeted(
    variants: Sequence[VariantSummary],
    control: VariantSummary | None,
    segments: Sequence[SegmentSummary],
    min_samples: int,
    win_probability: float,
    lose_probability: float,
    fdr: float = 0.05,
) -> list[dict[str, Any]]:
    if control is None:
        return []
    # (key, value) -> variant name -> (users, successes)
    counts: dict[tuple[str, str], dict[str, tuple[int, int]]] = defaultdict(dict)
    for row in segments:
        counts[(row.key, row.value)][row.variant] = (row.users, row.successes)
    discoveries = _segment_discoveries(counts, variants, control, min_samples, fdr)
    found = []
    for key in sorted({k for k, _ in counts}):
        for variant in variants:
            if variant.is_control:
                continue
            beat = {}
            for (segment_key, value), by_variant in sorted(counts.items()):
                if segment_key != key:
                    continue
                c = by_variant.get(control.name)
                v = by_variant.get(variant.name)
                if not c or not v or c[0] < min_samples or v[0] < min_samples:
                    continue
                beat[value] = prob_beat_control(
                    c[1] + 1, c[0] - c[1] + 1, v[1] + 1, v[0] - v[1] + 1
                )
            wins = {
                value: p for value, p in beat.items()
                if p >= win_probability and (key, value, variant.name) in discoveries
            }
            losses = {value: p for value, p in beat.items() if p <= lose_probability}
            if not wins or not losses:
                continue
            win_text = ", ".join(f"{key} = {value} ({p:.1%})" for value, p in wins.items())
            lose_text = ", ".join(f"{key} = {value} ({p:.1%})" for value, p in losses.items())
            target = ", ".join(str(value) for value in wins)
            found.append(
                {
                    "kind": "targeted_follow_up",
                    "title": f"Target '{variant.name}' at {key} = {target}",
                    "detail": (
                        f"'{variant.name}' beats control with high probability where {win_text}, "
                        f"but not where {lose_text}. Follow up with an experiment targeted at "
                        f"{key} = {target}."
                    ),
                    "variant": variant.name,
                    "segment_key": key,
                    "winning_values": wins,
                    "losing_values": losses,
                }
            )
    return found


def suggestions(
    variants: Sequence[VariantSummary],
    segments: Sequence[SegmentSummary] = (),
    *,
    min_samples: int = 100,
    win_probability: float = 0.95,
    cut_probability: float = 0.01,
    lose_probability: float = 0.5,
    target_uplift: float = 0.10,
    alpha: float = 0.05,
    power: float = 0.8,
    segment_fdr: float = 0.05,
    lower_is_better: bool = False,
) -> list[dict[str, Any]]:
    """Follow-up suggestions, most decisive first (see the module docstring for kinds).

    ``segment_fdr`` is the Benjamini–Hochberg level of the segment comparisons (1.0
    switches the correction off, which is how the simulations show what it buys).
    ``lower_is_better``: the summaries' successes are the users *without* the event
    (churn, refunds), and sample-size advice plans for a reduction of the event rate.

    Nothing is suggested from arms below ``min_samples`` users except how many more
    users they need; segment comparisons need ``min_samples`` users on both sides.
    """
    if not variants:
        return []
    control = _control(variants)
    found: list[dict[str, Any]] = []
    if min(v.users for v in variants) >= min_samples:
        found += _roll_out(variants, control, win_probability, alpha)
    if not found:  # no confirmed winner, even if the posterior already leans one way
        found += _extend_or_cut(
            variants, control, cut_probability, target_uplift, alpha, power, min_samples, lower_is_better
        )
    found += _targeted(
        variants, control, segments, min_samples, win_probability, lose_probability, segment_fdr
    )
    return found

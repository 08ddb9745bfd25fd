"""Recommendation text and follow-up suggestions built from per-variant summaries.

Pure functions over plain summaries so the API (and its tests) decide where the
numbers come from; every threshold is an argument with the default the dashboard
uses.  Suggestions are dictionaries, ready to serialise, each with a ``kind``:

* ``roll_out_and_iterate``: one variant is the clear winner; roll it out and test
  further values of the configuration keys that made the difference;
* ``extend_or_cut``: nothing has won and the arms are too small to see a 10%
  relative uplift; say how many more users that needs, and which arms are so far
  behind that cutting them would speed up the rest;
* ``targeted_follow_up``: a variant wins in one segment (a country, say) but not in
  another; suggest a follow-up targeted at the segment where it wins.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def _changed_config(winner: VariantSummary, others: Sequence[VariantSummary]) -> dict:
    """Config keys whose value in the winner differs from the control (or, without a
    control, from any other variant), with both values."""
    changed = {}
    for other in others:
        for key in sorted(set(winner.config) | set(other.config)):
            if key not in changed and winner.config.get(key) != other.config.get(key):
                changed[key] = {"control": other.config.get(key), "variant": winner.config.get(key)}
    return changed


def _roll_out(variants, control, win_probability) -> list[dict]:
    winner = max(variants, key=lambda v: v.prob_best)
    if winner.is_control or winner.prob_best < win_probability:
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
    variants, control, win_probability, cut_probability, target_uplift, alpha, power, min_samples
) -> list[dict]:
    if max(v.prob_best for v in variants) >= win_probability:
        return []
    parts = []
    required = additional = None
    base = control if control and control.successes else None
    base_rate = base.rate if base else (
        sum(v.successes for v in variants) / max(sum(v.users for v in variants), 1)
    )
    try:
        required = required_sample_size(base_rate, target_uplift, alpha, power)
    except ValueError:
        required = None  # no conversions yet (or a rate too close to 1 to plan for)
    if required is not None:
        additional = max(required - min(v.users for v in variants), 0)
        if additional:
            parts.append(
                f"To see a {target_uplift:.0%} relative uplift on a {base_rate:.2%} base rate "
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


def _targeted(variants, control, segments, min_samples, win_probability, lose_probability):
    if control is None:
        return []
    # (key, value) -> variant name -> (users, successes)
    counts: dict[tuple[str, str], dict[str, tuple[int, int]]] = defaultdict(dict)
    for row in segments:
        counts[(row.key, row.value)][row.variant] = (row.users, row.successes)
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
            wins = {value: p for value, p in beat.items() if p >= win_probability}
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
) -> list[dict]:
    """Follow-up suggestions, most decisive first (see the module docstring for kinds).

    Nothing is suggested from arms below ``min_samples`` users except how many more
    users they need; segment comparisons need ``min_samples`` users on both sides.
    """
    if not variants:
        return []
    control = _control(variants)
    found: list[dict] = []
    if min(v.users for v in variants) >= min_samples:
        found += _roll_out(variants, control, win_probability)
    found += _extend_or_cut(
        variants,
        control,
        win_probability,
        cut_probability,
        target_uplift,
        alpha,
        power,
        min_samples,
    )
    found += _targeted(
        variants, control, segments, min_samples, win_probability, lose_probability
    )
    return found

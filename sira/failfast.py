"""Fail-fast: decide, at any look, that an arm is losing and can be stopped.

The dashboard refreshes results continuously and the rule is checked at every
refresh, so a rule built from fixed-horizon tests would be checked hundreds of
times and stop equal arms far more often than its nominal level.  The default rule
is therefore an *always-valid* one: an asymptotic confidence sequence (CS) for the
difference of two conversion rates, which covers the true difference at every
sample size simultaneously with probability at least 1 - alpha, so looking after
every user costs nothing.  The seed's Bayesian rule is kept, as ``rule="bayesian"``,
for comparison; ``bench/sim_failfast.py`` measures how often each stops experiments
whose arms are all equal.  Formulas and figures: ``docs/statistics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from sira.posterior import prob_best
from sira.stats import ProportionStats
from sira.strata import PeriodTable, arm_estimates, difference_estimates, shared_periods

__all__ = [
    "DEFAULT_GUARDRAIL_MARGIN",
    "ArmFlag",
    "FailFastConfig",
    "bayesian_flags",
    "confidence_sequence_radius",
    "difference_confidence_sequence",
    "evaluate",
    "guardrail_flags",
    "guardrail_ratio_flags",
    "sequential_flags",
    "stratified_confidence_sequence",
]

RULES = ("sequential", "bayesian")

#: Guardrail non-inferiority margin (relative): a variant is flagged only when its
#: guardrail ratio is credibly more than (1 + margin) times control's.
DEFAULT_GUARDRAIL_MARGIN = 0.10


#: What SIRA does with a losing variant, and with a guardrail breach, unless told otherwise.
DEFAULT_FAIL_FAST_ACTION = "recommend"
DEFAULT_GUARDRAIL_ACTION = "pause_variant"


@dataclass(frozen=True)
class FailFastConfig:
    """How fail-fast decides.

    ``alpha`` is the family-wise error of the sequential rule (the chance that an
    experiment whose arms are all equal ever flags one), ``threshold`` the posterior
    probability the Bayesian rule requires.  ``target_samples`` is the per-arm sample
    size at which the confidence sequence is tightest; it does not affect validity,
    only where the rule is most powerful (the default was chosen by simulation, see
    ``docs/statistics.md``).
    """

    rule: str = "sequential"
    min_samples: int = 100
    threshold: float = 0.95
    alpha: float = 0.05
    target_samples: int = 2_000


@dataclass(frozen=True)
class ArmFlag:
    """An arm found to be losing.

    ``arm`` is the losing arm's index; ``against`` the arm it lost to (``None`` for a
    guardrail, where it is the control).  ``lower``/``upper`` bound how much worse the
    arm is, as a difference of rates (always-valid CS; ``None`` for the Bayesian rule)
    and ``probability`` is the Bayesian rule's P(worse than best) (``None`` otherwise).
    """

    arm: int
    against: int | None
    lower: float | None
    upper: float | None
    probability: float | None
    message: str


def _mixture_rho_squared(alpha: float, target_samples: float) -> float:
    """Normal-mixture parameter that makes the boundary tightest at ``target_samples``.

    rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / t*, the usual closed-form
    approximation to the optimum (Howard et al. 2021; Waudby-Smith et al. 2024).
    """
    log_alpha = math.log(alpha)
    return (-2.0 * log_alpha + math.log(1.0 - 2.0 * log_alpha)) / target_samples


def confidence_sequence_radius(
    variance: npt.ArrayLike, effective_users: npt.ArrayLike, alpha: float, target_samples: float
) -> npt.NDArray[np.float64]:
    """Radius of the always-valid CS for a difference with estimated ``variance`` after
    ``effective_users`` balanced pairs (elementwise on arrays):

        sqrt( V * (1 + 1/(t rho^2)) * log((t rho^2 + 1) / alpha^2) )

    See :func:`difference_confidence_sequence` for the derivation; with period
    stratification V and t are the stratified variance and information
    (:mod:`sira.strata`), which is what keeps the sequence valid when the split
    changes between periods.
    """
    variance = np.asarray(variance, dtype=float)
    effective_users = np.asarray(effective_users, dtype=float)
    t_rho2 = effective_users * _mixture_rho_squared(alpha, target_samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.sqrt(variance * (1.0 + 1.0 / t_rho2) * np.log((t_rho2 + 1.0) / alpha**2))
    return np.where(effective_users > 0, radius, np.inf)


def difference_confidence_sequence(
    successes_a: npt.ArrayLike,
    users_a: npt.ArrayLike,
    successes_b: npt.ArrayLike,
    users_b: npt.ArrayLike,
    alpha: float,
    target_samples: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Always-valid two-sided CS for p_b - p_a; returns (estimate, lower, upper).

    Works elementwise on numpy arrays (the simulation evaluates thousands of looks at
    once).  With D = p̂_b - p̂_a and V = p̃_a(1-p̃_a)/n_a + p̃_b(1-p̃_b)/n_b its
    estimated variance, the effective sample size t = 2 n_a n_b / (n_a + n_b) (equal
    to n with balanced arms) and sigma^2 = t V, the radius is the asymptotic CS of
    Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit
    theory and asymptotic confidence sequences" (arXiv:2103.06476):

        sigma * sqrt( (t rho^2 + 1) / (t^2 rho^2) * log((t rho^2 + 1) / alpha^2) )
          = sqrt( V * (1 + 1/(t rho^2)) * log((t rho^2 + 1) / alpha^2) )

    i.e. Robbins' normal-mixture boundary applied to the difference's score process
    in information time.  The variance uses p̃ = (successes + 1) / (users + 2) so
    that an arm with no conversions yet does not get a zero-width interval.
    """
    successes_a = np.asarray(successes_a, dtype=float)
    users_a = np.asarray(users_a, dtype=float)
    successes_b = np.asarray(successes_b, dtype=float)
    users_b = np.asarray(users_b, dtype=float)
    estimate = successes_b / users_b - successes_a / users_a
    smoothed_a = (successes_a + 1.0) / (users_a + 2.0)
    smoothed_b = (successes_b + 1.0) / (users_b + 2.0)
    variance = (
        smoothed_a * (1.0 - smoothed_a) / users_a + smoothed_b * (1.0 - smoothed_b) / users_b
    )
    effective_n = 2.0 * users_a * users_b / (users_a + users_b)
    radius = confidence_sequence_radius(variance, effective_n, alpha, target_samples)
    return estimate, estimate - radius, estimate + radius


def stratified_confidence_sequence(
    table: PeriodTable, a: int, b: int, alpha: float, target_samples: float
) -> tuple[float, float, float]:
    """Always-valid CS for p_b - p_a from period-stratified counts: (estimate, lower, upper).

    Each period's difference has mean p_b - p_a whatever the base rate of that period
    and whatever split the bandit chose for it (the split is fixed before the period's
    outcomes are seen), so the size-weighted sum of per-period differences is a
    martingale under the null and the normal-mixture boundary applies in its
    information time.  With one period this is :func:`difference_confidence_sequence`.
    """
    difference = table.difference(a, b)
    radius = float(confidence_sequence_radius(difference.variance, difference.effective_users, alpha, target_samples))
    return difference.estimate, difference.estimate - radius, difference.estimate + radius


def _as_table(arms: Sequence[ProportionStats] | PeriodTable) -> PeriodTable:
    return arms if isinstance(arms, PeriodTable) else PeriodTable.single(arms)


def sequential_flags(arms: Sequence[ProportionStats] | PeriodTable, config: FailFastConfig) -> list[ArmFlag]:
    """Flag arm i when the CS for p_j - p_i lies entirely above 0 for some arm j.

    ``arms`` is either pooled counts (one period) or a :class:`~sira.strata.PeriodTable`;
    with several periods the stratified CS is used, which stays valid when a bandit
    moves traffic between arms while the base rate drifts.  alpha is split equally
    over the k(k-1)/2 pairs of the experiment's k arms (Bonferroni), so with all arms
    equal the chance that any arm is *ever* flagged, however often this is called, is
    at most alpha (asymptotically).  A pair is evaluated only once both arms have
    ``min_samples`` users.  When an arm loses to several arms, the one reported is the
    one with the highest observed rate.
    """
    table = _as_table(arms)
    k = table.arms
    if k < 2:
        return []
    pair_alpha = config.alpha / (k * (k - 1) / 2)
    pooled = table.pooled()
    rates = [arm.rate for arm in table.effective()]
    eligible = [i for i, arm in enumerate(pooled) if arm.users >= config.min_samples]
    flags = []
    for i in eligible:
        losses = []
        for j in eligible:
            if j == i:
                continue
            _, lower, upper = stratified_confidence_sequence(table, i, j, pair_alpha, config.target_samples)
            if lower > 0.0:
                losses.append((rates[j], j, float(lower), float(upper)))
        if losses:
            _, j, lower, upper = max(losses)
            flags.append(
                ArmFlag(
                    arm=i,
                    against=j,
                    lower=lower,
                    upper=upper,
                    probability=None,
                    message=(
                        f"arm {i} converts worse than arm {j} "
                        f"({rates[i]:.2%} vs {rates[j]:.2%}): always-valid "
                        f"{1 - config.alpha:.0%} bounds on the gap are "
                        f"[{lower:.2%}, {upper:.2%}]"
                    ),
                )
            )
    return flags


def bayesian_flags(arms: Sequence[ProportionStats] | PeriodTable, config: FailFastConfig) -> list[ArmFlag]:
    """The seed's rule: flag arm i when P(arm i is worse than the best) > threshold.

    With k > 2 arms "P(worse than best)" is taken as 1 - P(arm i is best), where
    P(best) comes from the Beta(successes + 1, failures + 1) posteriors.  That is loose
    and gets looser with more arms: with 4 equal arms each already has P(not best)
    near 0.75 before any data, so noise pushes one over 0.95 often.  The rule is also
    checked at every look with no correction, so it stops equal experiments far more
    often than 5% (bench/sim_failfast.py); it is kept for comparison, not as default.
    Only evaluated once every arm has ``min_samples`` users.  With several periods the
    posteriors are the stratified ones (:meth:`~sira.strata.PeriodTable.effective`).
    """
    table = _as_table(arms)
    k = table.arms
    if k < 2 or any(arm.users < config.min_samples for arm in table.pooled()):
        return []
    arms = table.effective()
    best_probabilities = prob_best(
        [arm.successes + 1 for arm in arms], [arm.failures + 1 for arm in arms]
    )
    best = int(np.argmax(best_probabilities))
    flags = []
    for i in range(k):
        worse = 1.0 - float(best_probabilities[i])
        if i != best and worse > config.threshold:
            flags.append(
                ArmFlag(
                    arm=i,
                    against=best,
                    lower=None,
                    upper=None,
                    probability=worse,
                    message=(
                        f"arm {i} is worse than the best arm ({best}) with probability "
                        f"{worse:.1%} > {config.threshold:.0%}"
                    ),
                )
            )
    return flags


def evaluate(arms: Sequence[ProportionStats] | PeriodTable, config: FailFastConfig) -> list[ArmFlag]:
    """Apply the rule named in ``config.rule``."""
    if config.rule == "sequential":
        return sequential_flags(arms, config)
    if config.rule == "bayesian":
        return bayesian_flags(arms, config)
    raise ValueError(f"unknown fail-fast rule {config.rule!r}; expected one of {RULES}")


def guardrail_flags(
    control: ProportionStats | PeriodTable,
    variants: Sequence[ProportionStats] | int,
    config: FailFastConfig,
) -> list[ArmFlag]:
    """Flag variants whose guardrail rate (fraud alerts, refunds: higher is worse) is
    credibly above control's.

    Called either with pooled counts ``(control, variants, config)`` or with a
    :class:`~sira.strata.PeriodTable` and the control's index ``(table, control_index,
    config)``; with several periods the stratified CS is used.  Same always-valid CS as
    ``sequential_flags``, on p_variant - p_control, with alpha split over the number of
    variants.  ``arm`` indexes the variants (the arms other than control, in order);
    ``against`` is ``None`` (the control).  Both sides need ``min_samples`` users.
    """
    if isinstance(control, PeriodTable):
        table, control_index = control, int(cast(int, variants))
    else:
        table, control_index = PeriodTable.single([control, *cast(Sequence[ProportionStats], variants)]), 0
    others = [i for i in range(table.arms) if i != control_index]
    pooled = table.pooled()
    if not others or pooled[control_index].users < config.min_samples:
        return []
    pair_alpha = config.alpha / len(others)
    rates = table.effective()
    flags = []
    for position, index in enumerate(others):
        if pooled[index].users < config.min_samples:
            continue
        _, lower, upper = stratified_confidence_sequence(table, control_index, index, pair_alpha, config.target_samples)
        if lower > 0.0:
            flags.append(
                ArmFlag(
                    arm=position,
                    against=None,
                    lower=float(lower),
                    upper=float(upper),
                    probability=None,
                    message=(
                        f"variant {position} raises the guardrail rate "
                        f"({rates[index].rate:.2%} vs control {rates[control_index].rate:.2%}): always-valid "
                        f"{1 - config.alpha:.0%} bounds on the increase are "
                        f"[{float(lower):.2%}, {float(upper):.2%}]"
                    ),
                )
            )
    return flags


def _log_rate(estimates: dict[str, Any], arm: int) -> tuple[float, float] | None:
    """(log of an arm's stratified rate, its delta-method variance); None without data.

    A rate of 0 is replaced by half a success (0.5 / effective users) so that an arm
    without events yet has a finite, wide log rate instead of minus infinity.
    """
    users = float(estimates["effective_users"][arm])
    if users <= 0:
        return None
    rate = max(float(estimates["rate"][arm]), 0.5 / users)
    return math.log(rate), float(estimates["variance"][arm]) / rate**2


def guardrail_ratio_flags(
    bad: PeriodTable,
    control_index: int,
    config: FailFastConfig,
    margin: float = DEFAULT_GUARDRAIL_MARGIN,
    per: PeriodTable | None = None,
) -> list[ArmFlag]:
    """Flag variants whose guardrail ratio is credibly worse than control's by more than
    ``margin`` (a non-inferiority test that watches continuously).

    ``bad`` counts the users with the harmful outcome (a refund, a fraud alert) per
    period and arm.  With ``per`` (the users who converted) the guardrail is judged
    per converter, R = rate(bad) / rate(per): refunds per buyer, so a variant that sells
    more with the same refund habits has the same R as control and is never flagged.
    Without ``per`` it is the rate per assigned user.

    For each variant, D = log R_v − log R_c from the period-stratified rates, with
    variance the sum of the delta-method variances of the four log rates (the
    positive covariance of a refund with a purchase is left out, which only widens the
    sequence).  The variant is flagged when the always-valid lower bound of D exceeds
    log(1 + margin), alpha split over the variants; ``lower``/``upper`` of the flag are
    the bounds on R_v / R_c.  Both arms need ``min_samples`` users.
    """
    others = [i for i in range(bad.arms) if i != control_index]
    pooled = bad.pooled()
    if not others or pooled[control_index].users < config.min_samples:
        return []
    pair_alpha = config.alpha / len(others)
    threshold = math.log1p(margin)
    flags = []
    for position, index in enumerate(others):
        if pooled[index].users < config.min_samples:
            continue
        pair = bad.select([control_index, index])
        mask = shared_periods(pair.users) if pair.periods > 1 else None
        numerator = arm_estimates(pair.users, pair.successes, mask)
        parts = [_log_rate(numerator, 0), _log_rate(numerator, 1)]
        if per is not None:
            per_pair = per.select([control_index, index])
            per_mask = shared_periods(per_pair.users) if per_pair.periods > 1 else None
            denominator = arm_estimates(per_pair.users, per_pair.successes, per_mask)
            if float(denominator["rate"][0]) <= 0 or float(denominator["rate"][1]) <= 0:
                continue  # nobody converted yet on one side: no ratio to judge
            parts += [_log_rate(denominator, 0), _log_rate(denominator, 1)]
        if any(part is None for part in parts):
            continue
        known = cast(list[tuple[float, float]], parts)
        log_ratio = (known[1][0] - known[0][0]) - ((known[3][0] - known[2][0]) if per is not None else 0.0)
        variance = sum(part[1] for part in known)
        information = difference_estimates(pair.users, pair.successes, 0, 1)["effective_users"]
        radius = float(confidence_sequence_radius(variance, information, pair_alpha, config.target_samples))
        lower, upper = log_ratio - radius, log_ratio + radius
        if lower > threshold:
            scale = "per converter" if per is not None else "per user"
            flags.append(
                ArmFlag(
                    arm=position,
                    against=None,
                    lower=math.exp(lower),
                    upper=math.exp(upper),
                    probability=None,
                    message=(
                        f"variant {position}'s guardrail rate {scale} is {math.exp(log_ratio):.2f}x control's: "
                        f"always-valid {1 - config.alpha:.0%} bounds on the ratio [{math.exp(lower):.2f}, "
                        f"{math.exp(upper):.2f}] exceed the {margin:.0%} margin"
                    ),
                )
            )
    return flags

"""Sample-size planning: how many users an experiment needs before it can see an effect.

Two answers for the same question, because SIRA offers two ways to read a test:

* **Fixed horizon.**  Decide once, at a planned sample size, with a two-sided z-test of
  each treatment against control.  With ``arms`` arms there are ``arms - 1``
  comparisons, so each runs at ``alpha / (arms - 1)`` (Bonferroni).  Proportions use
  :func:`sira.stats.required_sample_size` (pooled under the null, unpooled under the
  alternative: what statsmodels' ``samplesize_proportions_2indep_onetail`` computes); means use
  ``n = 2 (z_{1-a/2} + z_{power})^2 sd^2 / delta^2``.
* **Sequential.**  Look as often as you like with the always-valid confidence
  sequence SIRA's fail-fast rule uses (:func:`sira.failfast.confidence_sequence_radius`,
  alpha split over the ``arms (arms - 1) / 2`` pairs, as ``sequential_flags`` does).
  The planned n is the smallest per-arm count at which the sequence excludes zero
  with probability ``power`` *at that look*, i.e. solving
  ``delta = radius(n) + z_{power} sqrt(V / n)``; since earlier looks can only add
  chances to stop, the probability of having stopped by n is at least ``power``.
  ``tests/sira/test_pure_planning.py`` checks it by simulation.

Every number is users per arm (arms are balanced); ``days`` is the total divided by the
daily traffic entering the experiment, rounded up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from sira.failfast import FailFastConfig, confidence_sequence_radius
from sira.stats import required_sample_size

METRIC_KINDS = ("proportion", "mean")
#: Upper end of the per-arm search; a plan beyond it is reported as infeasible.
MAX_USERS_PER_ARM = 10**12
#: Below this effect / sd ratio even a fixed-horizon test needs over 10^12 users per arm.
MIN_STANDARDISED_EFFECT = 1e-5


@dataclass(frozen=True)
class PlanInput:
    metric_kind: str
    baseline: float
    mde_relative: float
    sd: float | None = None
    arms: int = 2
    alpha: float = 0.05
    power: float = 0.8
    daily_users: int | None = None
    target_samples: int = FailFastConfig.target_samples

    @property
    def effect(self) -> float:
        """The absolute difference to detect."""
        return abs(self.baseline * self.mde_relative)


@dataclass(frozen=True)
class Plan:
    users_per_arm: int | None
    total_users: int | None
    days: int | None
    alpha_per_comparison: float
    message: str = ""


def _z(p: float) -> float:
    return float(special.ndtri(p))


def _days(total: int | None, daily_users: int | None) -> int | None:
    if total is None or not daily_users:
        return None
    return math.ceil(total / daily_users)


def _plan(users_per_arm: float | None, data: PlanInput, alpha: float, message: str = "") -> Plan:
    if users_per_arm is None or not math.isfinite(users_per_arm) or users_per_arm > MAX_USERS_PER_ARM:
        return Plan(None, None, None, alpha, message or "the effect is too small to detect with any realistic traffic")
    per_arm = max(1, math.ceil(users_per_arm))
    total = per_arm * data.arms
    return Plan(per_arm, total, _days(total, data.daily_users), alpha, message)


class PlanningError(ValueError):
    """Input that cannot be planned for; ``field`` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check(data: PlanInput) -> PlanningError | None:
    """Why the input cannot be planned for, or None."""
    if data.metric_kind not in METRIC_KINDS:
        return PlanningError("metric_kind", f"metric_kind must be one of {', '.join(METRIC_KINDS)}")
    if data.arms < 2:
        return PlanningError("arms", "an experiment needs at least 2 arms")
    if not 0.0 < data.alpha < 1.0:
        return PlanningError("alpha", "alpha must be in (0, 1)")
    if not 0.0 < data.power < 1.0:
        return PlanningError("power", "power must be in (0, 1)")
    if data.mde_relative == 0:
        return PlanningError("mde_relative", "mde_relative must not be zero")
    if data.metric_kind == "proportion":
        target = data.baseline * (1.0 + data.mde_relative)
        if not (1e-9 <= data.baseline <= 1.0 - 1e-9):
            return PlanningError("baseline", "baseline must be a rate in (0, 1) for a proportion")
        if not (0.0 < target < 1.0):
            return PlanningError("mde_relative", f"baseline * (1 + mde_relative) = {target:g} must stay in (0, 1)")
    else:
        if data.sd is None or not data.sd > 0:
            return PlanningError("sd", "sd must be positive for a mean")
        if data.baseline == 0:
            return PlanningError("baseline", "baseline must not be zero for a relative effect on a mean")
    return None


def _variance_sum(data: PlanInput) -> float:
    """p1 q1 + p2 q2 (proportions) or 2 sd^2 (means): n times the difference's variance."""
    if data.metric_kind == "proportion":
        p1 = data.baseline
        p2 = data.baseline * (1.0 + data.mde_relative)
        return p1 * (1.0 - p1) + p2 * (1.0 - p2)
    assert data.sd is not None  # checked by the input validation for means
    return 2.0 * data.sd**2


def fixed_horizon(data: PlanInput) -> Plan:
    alpha = data.alpha / (data.arms - 1)
    z_alpha, z_power = _z(1.0 - alpha / 2.0), _z(data.power)
    delta = data.effect
    if data.metric_kind == "proportion":
        return _plan(required_sample_size(data.baseline, data.mde_relative, alpha=alpha, power=data.power), data, alpha)
    return _plan(_variance_sum(data) * (z_alpha + z_power) ** 2 / delta**2, data, alpha)


def sequential_margin(n: float, data: PlanInput, alpha: float) -> float:
    """delta - radius(n) - z_power sd(n): positive once n users per arm suffice."""
    variance = _variance_sum(data) / n
    radius = float(confidence_sequence_radius(variance, n, alpha, data.target_samples))
    return data.effect - radius - _z(data.power) * math.sqrt(variance)


def sequential(data: PlanInput) -> Plan:
    pairs = data.arms * (data.arms - 1) / 2
    alpha = data.alpha / pairs
    low, high = 1.0, 2.0
    while sequential_margin(high, data, alpha) <= 0:
        low, high = high, high * 2
        if high > MAX_USERS_PER_ARM:
            return _plan(None, data, alpha)
    while high - low > 0.5:
        middle = (low + high) / 2.0
        if sequential_margin(middle, data, alpha) > 0:
            high = middle
        else:
            low = middle
    return _plan(high, data, alpha)


@dataclass(frozen=True)
class SampleSizePlan:
    fixed_horizon: Plan
    sequential: Plan


def plan_sample_size(data: PlanInput) -> SampleSizePlan:
    """Both plans; raises :class:`PlanningError` on input that cannot be planned for."""
    problem = check(data)
    if problem is not None:
        raise problem
    # An effect this small against the noise needs more than MAX_USERS_PER_ARM users in
    # any design; answering so up front also keeps the arithmetic away from underflow.
    noise = math.sqrt(_variance_sum(data))
    if noise > 0 and not data.effect / noise >= MIN_STANDARDISED_EFFECT:
        out_of_reach = "the effect is too small against the metric's noise to detect with any realistic traffic"
        return SampleSizePlan(
            Plan(None, None, None, data.alpha / (data.arms - 1), out_of_reach),
            Plan(None, None, None, data.alpha / (data.arms * (data.arms - 1) / 2), out_of_reach),
        )
    return SampleSizePlan(fixed_horizon(data), sequential(data))

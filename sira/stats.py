"""Sufficient statistics, intervals, uplift and sample size for SIRA (SRM: :mod:`sira.srm`).

Everything here is a pure function of small frozen dataclasses, in the manner of
GrowthBook's gbstats: the database rolls events up into counts and sums, and these
functions turn counts and sums into numbers a person can act on.  Degenerate input
(no users yet, a control that never converts) returns a result carrying a message
instead of raising, because an experiment that has just started is not an error.
Invalid input (negative counts, more successes than users) is a bug upstream and
raises ``ValueError``.

The definitions (what a "user" and a "success" are, which variance is used where)
are written out in ``docs/statistics.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from sira.posterior import prob_beat_control, prob_best

__all__ = [
    "Comparison",
    "Interval",
    "ProportionStats",
    "SampleStats",
    "UpliftResult",
    "beta_credible_interval",
    "d7_retention",
    "mean_interval",
    "newcombe_difference",
    "prob_beat_control",
    "ratio_interval",
    "prob_best",
    "relative_uplift",
    "required_sample_size",
    "wilson_interval",
]


@dataclass(frozen=True)
class ProportionStats:
    """Users assigned to an arm and how many of them succeeded.

    ``users`` is the number of *assigned* users, not of users with events: a user
    who never comes back is a failure, not a missing value.  ``successes`` counts
    distinct users with at least one event of the metric's type, so a user who
    converts three times still counts once.
    """

    users: int
    successes: int

    def __post_init__(self) -> None:
        if self.users < 0 or self.successes < 0 or self.successes > self.users:
            raise ValueError(
                f"need 0 <= successes <= users, got successes={self.successes}, users={self.users}"
            )

    @property
    def failures(self) -> int:
        return self.users - self.successes

    @property
    def rate(self) -> float:
        """Share of users who succeeded; 0.0 when there are no users yet."""
        return self.successes / self.users if self.users else 0.0

    def __add__(self, other: ProportionStats) -> ProportionStats:
        return ProportionStats(self.users + other.users, self.successes + other.successes)


@dataclass(frozen=True)
class SampleStats:
    """Count, sum and sum of squares of a per-user value: enough for a mean and its variance.

    For a value metric (amount spent per user) ``n`` is the number of assigned users,
    and users without events contribute 0 to ``sum`` and ``sum_squares``: the metric is
    "value per assigned user", which is what a roll-out decision is about.  Each user's
    value is first summed over that user's events; ``sum_squares`` is the sum of the
    squares of those per-user totals, not of individual events.
    """

    n: int
    sum: float
    sum_squares: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")

    @property
    def mean(self) -> float:
        """Per-user mean; 0.0 when there are no users yet."""
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); 0.0 with fewer than two users.

        Computed from the sums, so it can come out a hair below zero by cancellation
        when all values are equal; it is clamped at zero.
        """
        if self.n < 2:
            return 0.0
        return max((self.sum_squares - self.sum * self.sum / self.n) / (self.n - 1), 0.0)

    def __add__(self, other: SampleStats) -> SampleStats:
        return SampleStats(
            self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares
        )


@dataclass(frozen=True)
class Interval:
    """A two-sided interval; ``message`` says why it is degenerate when it is."""

    lower: float
    upper: float
    message: str = ""


@dataclass(frozen=True)
class UpliftResult:
    """Relative uplift of a variant over control; ``None`` when it is undefined."""

    estimate: float | None
    interval: Interval | None
    message: str = ""


def _two_sided_z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(special.ndtri(0.5 + confidence / 2.0))


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion.

    Preferred over the textbook normal interval because it stays inside [0, 1] and
    keeps close to nominal coverage when the rate is small or the sample is small,
    which is exactly the early life of a conversion experiment.
    """
    if n == 0:
        return Interval(0.0, 1.0, "no users yet")
    z = _two_sided_z(confidence)
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denominator
    return Interval(max(centre - half_width, 0.0), min(centre + half_width, 1.0))


def beta_credible_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Equal-tailed credible interval of the Beta(successes + 1, failures + 1) posterior.

    This is the posterior the bandit samples from (uniform prior), so the interval and
    the traffic weights tell the same story.
    """
    tail = (1.0 - confidence) / 2.0
    if not 0.0 < tail < 0.5:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a, b = successes + 1.0, n - successes + 1.0
    lower, upper = special.betaincinv(a, b, [tail, 1.0 - tail])
    return Interval(float(lower), float(upper), "" if n else "no users yet: prior interval")


def mean_interval(stats: SampleStats, confidence: float = 0.95) -> Interval:
    """Student-t interval for the per-user mean.

    With thousands of users t and normal agree; t only matters for the first few
    dozen users, where it is the honest choice.  With fewer than two users there is
    no variance estimate and the interval collapses onto the mean, with a message.
    """
    if stats.n < 2:
        return Interval(stats.mean, stats.mean, "fewer than two users: no variance estimate")
    _two_sided_z(confidence)
    t = float(special.stdtrit(stats.n - 1, 0.5 + confidence / 2.0))
    half_width = t * math.sqrt(stats.variance / stats.n)
    return Interval(stats.mean - half_width, stats.mean + half_width)


def _mean_and_variance_of_mean(stats: ProportionStats | SampleStats) -> tuple[int, float, float]:
    if isinstance(stats, ProportionStats):
        p = stats.rate
        return stats.users, p, p * (1.0 - p) / stats.users if stats.users else 0.0
    if isinstance(stats, SampleStats):
        return stats.n, stats.mean, stats.variance / stats.n if stats.n else 0.0
    raise TypeError(f"expected ProportionStats or SampleStats, got {type(stats).__name__}")


def relative_uplift(
    control: ProportionStats | SampleStats,
    variant: ProportionStats | SampleStats,
    confidence: float = 0.95,
) -> UpliftResult:
    """Relative uplift ``variant_mean / control_mean - 1`` with a delta-method interval.

    The ratio of two independent means m_v / m_c has, to first order, variance

        Var(m_v) / m_c**2 + m_v**2 * Var(m_c) / m_c**4

    where Var(m) is the variance of a mean (p(1-p)/n for a proportion, s^2/n for a
    value metric).  Subtracting 1 does not change the variance.  The interval is
    symmetric on the relative scale, which is what dashboards show; it is only
    trustworthy once the control mean is several standard errors away from zero.
    """
    if type(control) is not type(variant):
        raise TypeError("control and variant must be the same kind of statistics")
    n_c, mean_c, var_c = _mean_and_variance_of_mean(control)
    n_v, mean_v, var_v = _mean_and_variance_of_mean(variant)
    if n_c == 0 or n_v == 0:
        return UpliftResult(None, None, "no users yet in control or variant")
    if mean_c == 0.0:
        return UpliftResult(None, None, "control mean is zero: relative uplift is undefined")
    if mean_c < 0.0:
        # A ratio to a negative baseline flips the sign of every change: no estimate.
        return UpliftResult(None, None, "control mean is negative: relative uplift is undefined")
    z = _two_sided_z(confidence)
    estimate = mean_v / mean_c - 1.0
    variance = var_v / mean_c**2 + mean_v**2 * var_c / mean_c**4
    half_width = z * math.sqrt(variance)
    return UpliftResult(estimate, Interval(estimate - half_width, estimate + half_width))


@dataclass(frozen=True)
class Comparison:
    """A variant against control: point estimate, fixed-horizon and always-valid bounds.

    ``lower``/``upper`` are the usual 95% interval, right for one look at a planned
    sample size; ``always_valid_lower``/``always_valid_upper`` hold simultaneously at
    every look (a confidence sequence), which is what a decision taken while watching
    the dashboard needs.  Any of them is ``None`` when undefined, with ``message``.
    """

    estimate: float | None
    lower: float | None
    upper: float | None
    always_valid_lower: float | None
    always_valid_upper: float | None
    message: str = ""


def newcombe_difference(
    control_successes: float, control_users: float, variant_successes: float, variant_users: float,
    confidence: float = 0.95,
) -> Interval:
    """Newcombe's hybrid score interval for p_variant − p_control (his method 10).

    Built from the two Wilson intervals (l, u): with D = p̂_v − p̂_c,

        [D − sqrt((p̂_v − l_v)² + (u_c − p̂_c)²),  D + sqrt((u_v − p̂_v)² + (p̂_c − l_c)²)]

    It inherits Wilson's behaviour at the edges: never zero-width, inside [−1, 1],
    near-nominal coverage with few successes (Newcombe 1998, Statistics in Medicine 17).
    """
    if control_users <= 0 or variant_users <= 0:
        return Interval(-1.0, 1.0, "no users yet in control or variant")
    p_c = control_successes / control_users
    p_v = variant_successes / variant_users
    wilson_c = wilson_interval(control_successes, control_users, confidence)
    wilson_v = wilson_interval(variant_successes, variant_users, confidence)
    difference = p_v - p_c
    lower = difference - math.sqrt((p_v - wilson_v.lower) ** 2 + (wilson_c.upper - p_c) ** 2)
    upper = difference + math.sqrt((wilson_v.upper - p_v) ** 2 + (p_c - wilson_c.lower) ** 2)
    return Interval(max(lower, -1.0), min(upper, 1.0))


def ratio_interval(
    control_successes: float, control_users: float, variant_successes: float, variant_users: float,
    confidence: float = 0.95,
) -> Interval | None:
    """Score-based interval for the rate ratio p_variant / p_control (MOVER-R).

    Donner and Zou's method of variance estimates recovery applied to the two Wilson
    intervals (Donner & Zou 2012, Statistical Methods in Medical Research 21): the
    closed-form analogue of Fieller's interval for a ratio of two independent rates,

        L = (p̂_v p̂_c − sqrt((p̂_v p̂_c)² − l_v u_c (2p̂_v − l_v)(2p̂_c − u_c))) / (u_c (2p̂_c − u_c))
        U = (p̂_v p̂_c + sqrt((p̂_v p̂_c)² − u_v l_c (2p̂_v − u_v)(2p̂_c − l_c))) / (l_c (2p̂_c − l_c))

    A variant without successes gets [0, U] with U > 0, never a zero-width interval;
    the upper bound is unbounded (``inf``) when control's lower Wilson bound is 0.
    Returns None when control has no successes (the ratio is undefined).
    """
    if control_users <= 0 or variant_users <= 0 or control_successes <= 0:
        return None
    p_c = control_successes / control_users
    p_v = variant_successes / variant_users
    l_c, u_c = (lambda i: (i.lower, i.upper))(wilson_interval(control_successes, control_users, confidence))
    l_v, u_v = (lambda i: (i.lower, i.upper))(wilson_interval(variant_successes, variant_users, confidence))
    product = p_v * p_c
    denominator_lower = u_c * (2.0 * p_c - u_c)
    denominator_upper = l_c * (2.0 * p_c - l_c)
    lower_root = max(product**2 - l_v * u_c * (2.0 * p_v - l_v) * (2.0 * p_c - u_c), 0.0)
    upper_root = max(product**2 - u_v * l_c * (2.0 * p_v - u_v) * (2.0 * p_c - l_c), 0.0)
    # 2p̂ − u can be <= 0 for tiny counts (u above twice the estimate): the bound then
    # runs to the edge (0 below, infinity above).
    lower = (product - math.sqrt(lower_root)) / denominator_lower if denominator_lower > 0 else 0.0
    upper = (product + math.sqrt(upper_root)) / denominator_upper if denominator_upper > 0 else math.inf
    return Interval(max(lower, 0.0), upper)


def required_sample_size(
    base_rate: float,
    relative_uplift: float = 0.10,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Users per arm for a two-sided two-proportion z-test to detect a relative uplift.

    The classic formula (pooled variance under the null, unpooled under the
    alternative, equal arms):

        n = (z_{1-alpha/2} sqrt(2 pbar (1 - pbar)) + z_{power} sqrt(p1 q1 + p2 q2))^2 / (p2 - p1)^2

    with p1 = base_rate, p2 = base_rate * (1 + relative_uplift), pbar their average.
    This is a fixed-horizon number: it is what the dashboard quotes to say how far an
    experiment is from being able to see an effect of that size, not a stopping rule.
    A base rate outside (0, 1) or a target rate outside (0, 1) cannot be planned for
    and raises ``ValueError``; callers check for "no conversions yet" first.
    """
    p1 = base_rate
    p2 = base_rate * (1.0 + relative_uplift)
    if not (0.0 < p1 < 1.0 and 0.0 < p2 < 1.0) or p1 == p2:
        raise ValueError(
            f"need 0 < base_rate, target rate < 1 and a non-zero uplift; got {p1} -> {p2}"
        )
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError("alpha and power must be in (0, 1)")
    z_alpha = float(special.ndtri(1.0 - alpha / 2.0))
    z_power = float(special.ndtri(power))
    p_bar = (p1 + p2) / 2.0
    root = z_alpha * math.sqrt(2.0 * p_bar * (1.0 - p_bar)) + z_power * math.sqrt(
        p1 * (1.0 - p1) + p2 * (1.0 - p2)
    )
    return math.ceil(root * root / (p2 - p1) ** 2)


def d7_retention(eligible_users: int, retained_users: int) -> ProportionStats:
    """Day-7 retention as a proportion.

    Definition: among users assigned at least 8 days ago (``eligible_users``), the
    share active in the 24 hours starting 7 days after their own assignment, counting
    only engagement events (view, click, conversion) (``retained_users``).  Users
    whose day 7 is not over are left out of both counts: counting them as failures
    would make every young experiment look like it churns, and counting any later
    event (as "active on day 7 or after") makes the figure grow with the age of the
    experiment instead of measuring day 7.
    """
    return ProportionStats(users=eligible_users, successes=retained_users)

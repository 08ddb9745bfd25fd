"""Money statistics: ratio metrics by the delta method, percentile capping and CUPED.

Pure functions of small frozen dataclasses, like :mod:`sira.stats`. The unit of
analysis is the assigned user; every metric here is built from per-user sums of two
quantities ``a`` and ``b`` (:class:`PairStats`):

* a **ratio metric** is Σa / Σb over users (revenue per converter: a = the user's
  revenue, b = 1 if the user converted); its variance comes from the delta method,
  because numerator and denominator are random and correlated;
* **CUPED** adjusts a per-user metric ``a`` with a pre-exposure covariate ``b``:
  ``a - theta * (b - mean(b))`` keeps the mean and removes the share of the variance
  the covariate explains.

Definitions and the simulations behind them: ``docs/statistics.md`` ("Money").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = [
    "ArmValues",
    "CapResult",
    "CupedResult",
    "Estimate",
    "PairStats",
    "cap_value",
    "cuped",
    "cuped_theta",
    "mean_estimate",
    "per_user_analysis",
    "PerUserResult",
    "ratio_estimate",
    "ratio_uplift",
    "relative_change",
]


@dataclass(frozen=True)
class PairStats:
    """Sums over ``n`` users of two per-user quantities: enough for means, variances, covariance.

    Users without events count with a = b = 0 (or their covariate value), so ``n`` is the
    number of assigned users. ``__add__`` pools arms.
    """

    n: int
    sum_a: float
    sum_a2: float
    sum_b: float
    sum_b2: float
    sum_ab: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")

    @classmethod
    def from_arrays(cls, a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairStats:
        a = np.asarray(a, dtype=float)
        b = np.asarray(b, dtype=float)
        if a.shape != b.shape:
            raise ValueError("a and b must have the same length")
        return cls(int(a.size), float(a.sum()), float(a @ a), float(b.sum()), float(b @ b), float(a @ b))

    def __add__(self, other: PairStats) -> PairStats:
        return PairStats(
            self.n + other.n,
            self.sum_a + other.sum_a,
            self.sum_a2 + other.sum_a2,
            self.sum_b + other.sum_b,
            self.sum_b2 + other.sum_b2,
            self.sum_ab + other.sum_ab,
        )

    @property
    def mean_a(self) -> float:
        return self.sum_a / self.n if self.n else 0.0

    @property
    def mean_b(self) -> float:
        return self.sum_b / self.n if self.n else 0.0

    def _centred(self, total_xy: float, sum_x: float, sum_y: float) -> float:
        if self.n < 2:
            return 0.0
        return (total_xy - sum_x * sum_y / self.n) / (self.n - 1)

    @property
    def var_a(self) -> float:
        """Sample variance of a (ddof=1), clamped at 0 against cancellation."""
        return max(self._centred(self.sum_a2, self.sum_a, self.sum_a), 0.0)

    @property
    def var_b(self) -> float:
        return max(self._centred(self.sum_b2, self.sum_b, self.sum_b), 0.0)

    @property
    def cov_ab(self) -> float:
        return self._centred(self.sum_ab, self.sum_a, self.sum_b)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval; ``None`` and a message when undefined."""

    estimate: float | None
    lower: float | None
    upper: float | None
    message: str = ""
    #: Variance of the estimator (what intervals and uplifts are built from).
    variance: float | None = None

    def as_dict(self) -> dict[str, float | str | None]:
        return {"estimate": self.estimate, "lower": self.lower, "upper": self.upper, "message": self.message}


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(special.ndtri(0.5 + confidence / 2.0))


def _interval(estimate: float, variance: float, confidence: float, message: str = "") -> Estimate:
    half = _z(confidence) * math.sqrt(max(variance, 0.0))
    return Estimate(estimate, estimate - half, estimate + half, message, variance)


def mean_estimate(stats: PairStats, confidence: float = 0.95) -> Estimate:
    """Mean of ``a`` per user with a normal interval (variance s²/n)."""
    if stats.n < 2:
        return Estimate(stats.mean_a if stats.n else None, None, None, "fewer than two users: no variance estimate")
    return _interval(stats.mean_a, stats.var_a / stats.n, confidence)


def ratio_estimate(stats: PairStats, confidence: float = 0.95) -> Estimate:
    """Σa / Σb with the delta-method variance of a ratio of two correlated means.

    With per-user means μa, μb, variances σa², σb² and covariance σab over n users,

        Var(μa / μb) ≈ (σa² / μb² − 2 μa σab / μb³ + μa² σb² / μb⁴) / n.

    Needed because the denominator (converters, revenue) is itself random: treating
    orders as independent draws would understate the variance whenever users convert
    more than once.
    """
    if stats.n < 2:
        return Estimate(None, None, None, "fewer than two users: no variance estimate")
    if stats.sum_b == 0:
        return Estimate(None, None, None, "the denominator is zero: the ratio is undefined")
    mu_a, mu_b = stats.mean_a, stats.mean_b
    ratio = mu_a / mu_b
    variance = (
        stats.var_a / mu_b**2 - 2.0 * mu_a * stats.cov_ab / mu_b**3 + mu_a**2 * stats.var_b / mu_b**4
    ) / stats.n
    return _interval(ratio, variance, confidence)


def relative_change(control: Estimate, variant: Estimate, confidence: float = 0.95) -> Estimate:
    """variant / control − 1 for two independent estimates, by the delta method.

    Var ≈ Var(v) / c² + v² Var(c) / c⁴ (the arms are independent samples of users).
    """
    if control.estimate is None or variant.estimate is None or control.variance is None or variant.variance is None:
        return Estimate(None, None, None, control.message or variant.message or "no estimate in control or variant")
    c, v = control.estimate, variant.estimate
    if c == 0:
        return Estimate(None, None, None, "control is zero: relative uplift is undefined")
    variance = variant.variance / c**2 + v**2 * control.variance / c**4
    return _interval(v / c - 1.0, variance, confidence)


def ratio_uplift(control: PairStats, variant: PairStats, confidence: float = 0.95) -> Estimate:
    """Relative uplift of a ratio metric (variant over control)."""
    return relative_change(ratio_estimate(control, confidence), ratio_estimate(variant, confidence), confidence)


def cap_value(values: Sequence[float] | np.ndarray, percentile: float | None) -> float | None:
    """The ``percentile`` (0-100, linear interpolation) of the positive values; ``None`` for no cap.

    Computed on users with a positive value only: with a 5% conversion rate the 99.5th
    percentile of all users (zeros included) would cap nine in ten buyers.
    """
    if percentile is None:
        return None
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    positive = np.asarray(values, dtype=float)
    positive = positive[positive > 0]
    if positive.size == 0:
        return None
    return float(np.percentile(positive, percentile))


def cuped_theta(arms: Sequence[PairStats]) -> float:
    """The CUPED coefficient θ = Cov(a, b) / Var(b) on all arms pooled.

    Pooling is unbiased under randomisation (the covariate's distribution does not
    depend on the arm) and gives every arm the same θ, so the adjustment cannot by
    itself create a difference between arms. 0 when the covariate does not vary.
    """
    pooled = PairStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for arm in arms:
        pooled = pooled + arm
    var_b = pooled.var_b
    return pooled.cov_ab / var_b if var_b > 0 else 0.0


@dataclass(frozen=True)
class CupedResult:
    adjusted: Estimate
    #: Share of the per-user variance of ``a`` removed by the adjustment in this arm.
    variance_reduction: float | None


def cuped(stats: PairStats, theta: float, pooled_mean_b: float, confidence: float = 0.95) -> CupedResult:
    """The arm's mean of ``a`` adjusted by its covariate ``b``: ā − θ (b̄ − pooled b̄).

    Its variance is Var(a − θ b) / n = (σa² − 2θ σab + θ² σb²) / n, from the arm's own
    sums; ``variance_reduction`` = 1 − Var(a − θ b) / σa².
    """
    if stats.n < 2:
        return CupedResult(Estimate(None, None, None, "fewer than two users: no variance estimate"), None)
    adjusted_mean = stats.mean_a - theta * (stats.mean_b - pooled_mean_b)
    residual = max(stats.var_a - 2.0 * theta * stats.cov_ab + theta**2 * stats.var_b, 0.0)
    reduction = 1.0 - residual / stats.var_a if stats.var_a > 0 else None
    return CupedResult(_interval(adjusted_mean, residual / stats.n, confidence), reduction)


@dataclass(frozen=True)
class ArmValues:
    """One arm's per-user amounts, as the analysis holds them.

    ``values`` and ``covariates`` cover the users with any amount (anyone else is a 0 and
    may be left out); ``n`` counts every assigned user and ``sum_x``/``sum_x2`` are the
    covariate's sums over all of them.
    """

    n: int
    values: np.ndarray
    covariates: np.ndarray
    sum_x: float
    sum_x2: float

    def stats(self, cap: float | None = None) -> PairStats:
        """a = the user's amount (capped at ``cap``), b = the user's covariate."""
        y = self.values if cap is None else np.minimum(self.values, cap)
        return PairStats(self.n, float(y.sum()), float(y @ y), self.sum_x, self.sum_x2, float(y @ self.covariates))


@dataclass(frozen=True)
class PerUserResult:
    """Per-user statistics of one arm; uplifts are ``None`` for the control arm."""

    per_user: Estimate
    per_user_uncapped: Estimate
    uplift: Estimate | None
    uplift_uncapped: Estimate | None
    cuped: CupedResult
    cuped_uplift: Estimate | None
    theta: float


@dataclass(frozen=True)
class CapResult:
    percentile: float | None
    value: float | None
    users_capped: int


def per_user_analysis(
    arms: Sequence[ArmValues], control: int, cap_percentile: float | None, confidence: float = 0.95
) -> tuple[CapResult, list[PerUserResult]]:
    """Per-user mean of every arm, capped and uncapped, with uplifts and CUPED.

    The cap is :func:`cap_value` of all arms' amounts pooled (the same cap for every
    arm, so capping cannot itself favour one); CUPED runs on the capped amounts with one
    pooled θ.
    """
    pooled = np.concatenate([arm.values for arm in arms]) if arms else np.array([])
    cap = cap_value(pooled, cap_percentile)
    capped = [arm.stats(cap) for arm in arms]
    uncapped = [arm.stats() for arm in arms]
    per_user = [mean_estimate(s, confidence) for s in capped]
    per_user_uncapped = [mean_estimate(s, confidence) for s in uncapped]
    theta = cuped_theta(capped)
    pooled_x = sum(s.sum_b for s in capped) / max(sum(s.n for s in capped), 1)
    adjusted = [cuped(s, theta, pooled_x, confidence) for s in capped]
    results = []
    for i in range(len(arms)):
        is_control = i == control
        results.append(PerUserResult(
            per_user=per_user[i],
            per_user_uncapped=per_user_uncapped[i],
            uplift=None if is_control else relative_change(per_user[control], per_user[i], confidence),
            uplift_uncapped=None if is_control else relative_change(
                per_user_uncapped[control], per_user_uncapped[i], confidence
            ),
            cuped=adjusted[i],
            cuped_uplift=None if is_control else relative_change(
                adjusted[control].adjusted, adjusted[i].adjusted, confidence
            ),
            theta=theta,
        ))
    users_capped = int((pooled > cap).sum()) if cap is not None else 0
    return CapResult(cap_percentile, cap, users_capped), results

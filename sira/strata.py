"""Period-stratified estimates: rates and differences that stay right when the split changes.

A bandit changes its traffic weights as it learns, a pause takes an arm out and a
resume puts it back.  Each such change opens a new *allocation period*; within one
period every arm's probability of being chosen is fixed.  Pooling counts over the
whole run compares arms that were sampled at different times in different
proportions: if the base rate drifts (a launch, a weekly cycle) while one arm gets
most of the late traffic, that arm looks better or worse for no reason of its own
(Simpson's paradox).  The fix is to compare arms *within* periods and only then
combine:

* per-period rate of arm a in period k: p̂_ak = s_ak / n_ak;
* period weights proportional to period size, w_k = N_k / Σ N_j, over the periods
  in which the arms being compared all have users;
* stratified rate p̂_a = Σ_k w_k p̂_ak, variance Σ_k w_k² p̃_ak (1 − p̃_ak) / n_ak with
  p̃ = (s + 1) / (n + 2) (so an arm without successes in a period does not get a
  zero variance);
* a difference p̂_b − p̂_a is taken over the periods both arms share, with variance
  the sum of the two arms' over those periods.

With a single period every quantity is exactly the pooled one, so a fixed split
that never paused gives the same numbers as before periods existed.

All functions take arrays shaped ``(..., periods, arms)`` so that the simulations in
``bench/`` evaluate thousands of experiments at once with this same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sira.stats import ProportionStats

__all__ = [
    "PeriodTable",
    "StratifiedArm",
    "StratifiedDifference",
    "arm_estimates",
    "difference_estimates",
    "shared_periods",
]


@dataclass(frozen=True)
class StratifiedArm:
    """One arm's stratified rate.

    ``effective_users`` / ``effective_successes`` are the binomial counts with the
    same mean and variance (equal to the raw counts with one period), which is how
    the Beta posteriors, P(best) and the bandit see the arm.
    """

    rate: float
    variance: float
    effective_users: float
    effective_successes: float
    periods: int

    def as_proportion(self) -> ProportionStats:
        # Effective counts are fractional; ProportionStats accepts them at runtime.
        return ProportionStats(users=self.effective_users, successes=self.effective_successes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StratifiedDifference:
    """p̂_b − p̂_a over the periods both arms share.

    ``effective_users`` is the information in units of balanced pairs of users:
    1 / Σ_k w_k² / t_k with t_k = 2 n_ak n_bk / (n_ak + n_bk), the usual harmonic
    sample size within a period (equal to t_1 with one period).
    """

    estimate: float
    variance: float
    effective_users: float
    periods: int


def _weights(users: np.ndarray, present: np.ndarray) -> np.ndarray:
    """w_k ∝ N_k over the periods where ``present`` holds, normalised to sum to 1."""
    sizes = users.sum(axis=-1)
    raw = np.where(present, sizes, 0.0)
    total = raw.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, raw / np.where(total > 0, total, 1.0), 0.0)


def shared_periods(users: npt.ArrayLike) -> np.ndarray:
    """Mask (..., periods) of the periods in which every arm that has users at all has
    users; all periods where no such period exists (so an arm is never left without data)."""
    users = np.asarray(users, dtype=float)
    live = users.sum(axis=-2, keepdims=True) > 0
    keep = np.all((users > 0) | ~live, axis=-1)
    return np.where(keep.any(axis=-1, keepdims=True), keep, True)


def arm_estimates(
    users: npt.ArrayLike, successes: npt.ArrayLike, period_mask: npt.ArrayLike | None = None
) -> dict[str, np.ndarray]:
    """Stratified rate of every arm: arrays (..., arms) under keys ``rate``, ``variance``,
    ``effective_users``, ``effective_successes`` and ``periods``.

    Arm a's rate is combined over the periods in which a itself has users (and which
    ``period_mask``, shaped (..., periods), keeps).  An arm without any user gets rate
    0, variance 0 and zero effective counts (the Beta prior, as for raw counts).
    """
    users = np.asarray(users, dtype=float)
    successes = np.asarray(successes, dtype=float)
    if period_mask is not None:
        keep = np.asarray(period_mask, dtype=bool)[..., None]
        users = np.where(keep, users, 0.0)
        successes = np.where(keep, successes, 0.0)
    present = users > 0
    safe_users = np.where(present, users, 1.0)
    # per-arm weights: (..., periods, arms)
    sizes = users.sum(axis=-1, keepdims=True)
    raw = np.where(present, sizes, 0.0)
    total = raw.sum(axis=-2, keepdims=True)
    weights = np.where(total > 0, raw / np.where(total > 0, total, 1.0), 0.0)
    rate_k = successes / safe_users
    smoothed_k = (successes + 1.0) / (users + 2.0)
    rate = (weights * rate_k).sum(axis=-2)
    smoothed = (weights * smoothed_k).sum(axis=-2)
    variance = (weights**2 * smoothed_k * (1.0 - smoothed_k) / safe_users).sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        effective_users = np.where(variance > 0, smoothed * (1.0 - smoothed) / np.where(variance > 0, variance, 1.0), 0.0)
    # One period: smoothed(1-smoothed)/variance is n up to rounding; snap it so the
    # single-period case reproduces the raw counts exactly.
    periods = present.sum(axis=-2)
    pooled_users = users.sum(axis=-2)
    pooled_successes = successes.sum(axis=-2)
    single = periods <= 1
    effective_users = np.where(single, pooled_users, effective_users)
    effective_successes = np.where(single, pooled_successes, rate * effective_users)
    return {
        "rate": rate,
        "variance": variance,
        "effective_users": effective_users,
        "effective_successes": np.clip(effective_successes, 0.0, effective_users),
        "periods": periods,
    }


def difference_estimates(users: npt.ArrayLike, successes: npt.ArrayLike, a: int, b: int) -> dict[str, np.ndarray]:
    """Stratified p̂_b − p̂_a over shared periods: arrays (...) under keys ``estimate``,
    ``variance``, ``effective_users`` and ``periods`` (0 where no period is shared)."""
    users = np.asarray(users, dtype=float)
    successes = np.asarray(successes, dtype=float)
    n_a, n_b = users[..., a], users[..., b]
    s_a, s_b = successes[..., a], successes[..., b]
    common = (n_a > 0) & (n_b > 0)
    weights = _weights(users, common)
    safe_a = np.where(common, n_a, 1.0)
    safe_b = np.where(common, n_b, 1.0)
    smoothed_a = (s_a + 1.0) / (n_a + 2.0)
    smoothed_b = (s_b + 1.0) / (n_b + 2.0)
    estimate = (weights * (s_b / safe_b - s_a / safe_a)).sum(axis=-1)
    variance = (
        weights**2
        * (smoothed_a * (1.0 - smoothed_a) / safe_a + smoothed_b * (1.0 - smoothed_b) / safe_b)
    ).sum(axis=-1)
    pairs = 2.0 * safe_a * safe_b / (safe_a + safe_b)
    inverse_information = (weights**2 / pairs).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        effective = np.where(inverse_information > 0, 1.0 / np.where(inverse_information > 0, inverse_information, 1.0), 0.0)
    return {
        "estimate": estimate,
        "variance": variance,
        "effective_users": effective,
        "periods": common.sum(axis=-1),
    }


@dataclass(frozen=True)
class PeriodTable:
    """Users and successes per (allocation period, arm), periods in chronological order.

    ``users[k][a]`` users were assigned to arm a in period k and ``successes[k][a]``
    of them succeeded.  A fixed split that never changed has one row.
    """

    users: np.ndarray
    successes: np.ndarray

    def __post_init__(self) -> None:
        users = np.asarray(self.users, dtype=float)
        successes = np.asarray(self.successes, dtype=float)
        if users.ndim != 2 or users.shape != successes.shape:
            raise ValueError("users and successes must be 2-d arrays (periods, arms) of the same shape")
        if np.any(successes < 0) or np.any(successes > users):
            raise ValueError("need 0 <= successes <= users in every period")
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "successes", successes)

    @classmethod
    def single(cls, arms: Sequence[ProportionStats]) -> PeriodTable:
        """One period holding the given pooled counts (a fixed split that never changed)."""
        return cls(
            np.array([[arm.users for arm in arms]], dtype=float).reshape(1, len(arms)),
            np.array([[arm.successes for arm in arms]], dtype=float).reshape(1, len(arms)),
        )

    @property
    def periods(self) -> int:
        return int(self.users.shape[0])

    @property
    def arms(self) -> int:
        return int(self.users.shape[1])

    def pooled(self) -> list[ProportionStats]:
        """Counts summed over periods (what the raw totals say)."""
        return [
            ProportionStats(int(round(u)), int(round(s)))
            for u, s in zip(self.users.sum(axis=0), self.successes.sum(axis=0))
        ]

    def flipped(self) -> PeriodTable:
        """Failures as successes: the decision scale of a metric where fewer is better."""
        return PeriodTable(self.users, self.users - self.successes)

    def select(self, arms: Sequence[int]) -> PeriodTable:
        index = list(arms)
        return PeriodTable(self.users[:, index], self.successes[:, index])

    def arm(self, index: int) -> StratifiedArm:
        estimates = arm_estimates(self.users, self.successes)
        return StratifiedArm(
            rate=float(estimates["rate"][index]),
            variance=float(estimates["variance"][index]),
            effective_users=float(estimates["effective_users"][index]),
            effective_successes=float(estimates["effective_successes"][index]),
            periods=int(estimates["periods"][index]),
        )

    def effective(self, shared: bool = True) -> list[ProportionStats]:
        """Every arm as binomial counts with its stratified mean and variance.

        With ``shared`` (the default) only the periods in which every arm that has
        users at all has users are used, so that all arms are compared over the same
        stretch of time; arms without users keep zero counts.  With one period these
        are the raw counts.
        """
        mask = shared_periods(self.users) if shared and self.periods > 1 else None
        estimates = arm_estimates(self.users, self.successes, mask)
        return [
            ProportionStats(users=float(n), successes=float(s))  # type: ignore[arg-type]  # fractional effective counts
            for n, s in zip(estimates["effective_users"], estimates["effective_successes"])
        ]

    def difference(self, a: int, b: int) -> StratifiedDifference:
        estimates = difference_estimates(self.users, self.successes, a, b)
        return StratifiedDifference(
            estimate=float(estimates["estimate"]),
            variance=float(estimates["variance"]),
            effective_users=float(estimates["effective_users"]),
            periods=int(estimates["periods"]),
        )

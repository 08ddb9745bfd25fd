"""Traffic weights for the multi-armed bandit (Thompson sampling, published as weights).

The seed describes per-request Thompson sampling: draw once from every arm's Beta
posterior and serve the arm with the largest draw.  The probability that a single
draw picks arm i is exactly P(arm i is best) under the same posterior, so
publishing P(best) as traffic weights and drawing an arm from them per request
serves every arm with the same probability as per-request Thompson sampling, while
the posterior itself is only recomputed periodically (by a task) instead of on the
request path.  ``bench/sim_regret.py`` measures what the periodic refresh costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sira.posterior import prob_best
from sira.stats import ProportionStats
from sira.strata import PeriodTable

__all__ = ["BanditConfig", "WeightsResult", "bandit_weights", "draw_arm", "floored_weights", "live_effective", "posteriors", "weights_moved", "REPUBLISH_STEP"]


@dataclass(frozen=True)
class BanditConfig:
    """``min_samples``: users every unpaused arm needs before the bandit takes over
    from the configured shares.  ``floor``: weight every unpaused arm keeps so that an
    arm that started badly by chance can still recover (and so that results for every
    arm keep accruing)."""

    min_samples: int = 100
    floor: float = 0.01


@dataclass(frozen=True)
class WeightsResult:
    """Weights (sum to 1, or all zero when every arm is paused) and how they were set.

    ``prob_best`` is P(best) among unpaused arms (0 for paused arms), reported also
    during burn-in so the dashboard can show it.
    """

    weights: np.ndarray
    prob_best: np.ndarray
    burn_in: bool
    message: str = ""


#: Published weights are replaced only when some arm's weight moves by more than this.
#: Each replacement opens a new allocation period (every assignment records its
#: period), so the step bounds the number of periods an experiment accumulates while
#: costing the bandit almost nothing (``bench/sim_adaptive.py``).
REPUBLISH_STEP = 0.01


def weights_moved(previous: npt.ArrayLike, new: npt.ArrayLike, step: float = REPUBLISH_STEP) -> npt.NDArray[np.bool_]:
    """Whether ``new`` weights differ from ``previous`` by more than ``step`` for some arm
    (elementwise over leading dimensions of (..., arms) arrays)."""
    difference = np.abs(np.asarray(new, dtype=float) - np.asarray(previous, dtype=float))
    moved: npt.NDArray[np.bool_] = difference.max(axis=-1) > step
    return moved


def posteriors(arms: Sequence[ProportionStats]) -> tuple[np.ndarray, np.ndarray]:
    """Beta posteriors under a uniform prior: alpha = successes + 1, beta = failures + 1."""
    alphas = np.array([arm.successes + 1.0 for arm in arms], dtype=float)
    betas = np.array([arm.failures + 1.0 for arm in arms], dtype=float)
    return alphas, betas


def floored_weights(best: npt.ArrayLike, active: npt.ArrayLike, floor: float) -> np.ndarray:
    """w_i = floor + (1 - m floor) p_i over the m active arms, 0 for the others; works on
    (..., arms) arrays (the simulations compute many experiments at once)."""
    best = np.asarray(best, dtype=float)
    active = np.asarray(active, dtype=bool)
    m = active.sum(axis=-1, keepdims=True)
    floor_used = np.minimum(floor, 1.0 / np.maximum(m, 1))
    weights = np.where(active, floor_used + (1.0 - m * floor_used) * best, 0.0)
    total = weights.sum(axis=-1, keepdims=True)
    return np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)


def live_effective(table: PeriodTable, paused: Sequence[bool]) -> list[ProportionStats]:
    """Stratified counts of every arm: unpaused arms over the periods they all share
    (so they are compared over the same time), paused arms over their own periods."""
    live = [i for i, off in enumerate(paused) if not off] or list(range(table.arms))
    own = table.effective(shared=False)
    shared = table.select(live).effective()
    by_index = dict(zip(live, shared))
    return [by_index.get(i, own[i]) for i in range(table.arms)]


def bandit_weights(
    arms: Sequence[ProportionStats] | PeriodTable,
    traffic_shares: Sequence[float],
    paused: Sequence[bool],
    config: BanditConfig,
) -> WeightsResult:
    """Traffic weights for the next period.

    Burn-in: while any unpaused arm has fewer than ``min_samples`` users, the weights
    are the configured traffic shares renormalised over unpaused arms (uniform if
    those shares are all zero), so every arm gets a fair start before the posterior
    is trusted.

    After burn-in, with m unpaused arms and p_i = P(arm i is best among them):

        w_i = floor + (1 - m * floor) * p_i

    which keeps every unpaused arm at or above ``floor`` and still sums to 1.  The
    floor is capped at 1/m (uniform weights) when m * floor > 1.  Paused arms get 0.

    ``arms`` may be a :class:`~sira.strata.PeriodTable`: burn-in then counts the users
    actually assigned and the posteriors are the period-stratified ones, so a base
    rate that drifts while the weights move does not lock the bandit onto the arm
    that happened to get the good periods.
    """
    if isinstance(arms, PeriodTable):
        assigned = [arm.users for arm in arms.pooled()]
        arms = live_effective(arms, paused)
    else:
        assigned = [arm.users for arm in arms]
    k = len(arms)
    if len(traffic_shares) != k or len(paused) != k:
        raise ValueError("arms, traffic_shares and paused must have the same length")
    zeros = np.zeros(k)
    if k == 0:
        return WeightsResult(zeros, zeros, False, "no arms")
    active = ~np.asarray(paused, dtype=bool)
    m = int(active.sum())
    if m == 0:
        return WeightsResult(zeros, zeros, False, "all arms are paused: no traffic to assign")

    alphas, betas = posteriors(arms)
    best = np.zeros(k)
    best[active] = prob_best(alphas[active], betas[active])

    if any(users < config.min_samples for users, on in zip(assigned, active) if on):
        shares = np.where(active, np.asarray(traffic_shares, dtype=float), 0.0)
        shares = np.clip(shares, 0.0, None)
        message = f"burn-in: every unpaused arm needs {config.min_samples} users"
        if shares.sum() <= 0:
            shares = active.astype(float)
            message += "; unpaused arms have no configured share, splitting evenly"
        return WeightsResult(shares / shares.sum(), best, True, message)

    return WeightsResult(floored_weights(best, active, config.floor), best, False)


def draw_arm(weights: Sequence[float], rng: Callable[[], float] | np.random.Generator | int | None) -> int:
    """Pick an arm index with probability proportional to ``weights`` (probability matching).

    Zero-weight arms are never picked. ``rng`` is a function returning a uniform draw in
    [0, 1) (the assignment path passes ``random.random``: no NumPy call per request), a
    Generator or a seed.
    """
    total = sum(weights)
    if not weights or total <= 0:
        raise ValueError("no arm has a positive weight")
    u = (rng() if callable(rng) else np.random.default_rng(rng).random()) * total
    cumulative = 0.0
    for index, weight in enumerate(weights):
        cumulative += weight
        if u < cumulative:
            return index
    # u can round up to the total: the last arm that has weight.
    return max(index for index, weight in enumerate(weights) if weight > 0)

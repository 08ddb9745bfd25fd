"""Do SIRA's decisions stay right when a bandit moves traffic while the base rate drifts?

Every simulated experiment runs the production cadence with SIRA's own functions:

* every ``RECOMPUTE_EVERY`` users the bandit recomputes its weights from the
  period-stratified posteriors (:func:`sira.strata.arm_estimates` over
  :func:`sira.strata.shared_periods`, then :func:`sira.posterior.prob_best_batch`
  and :func:`sira.bandit.floored_weights`, burn-in on the shares until every arm has
  ``min_samples`` users), and republishes them only when some weight moved by more
  than :data:`sira.bandit.REPUBLISH_STEP`; each republication opens a new period,
  exactly the bookkeeping of ``sira.recompute_posteriors`` and the assignment path;
* after every batch the fail-fast rule looks at the experiment
  (:func:`sira.strata.difference_estimates` and
  :func:`sira.failfast.confidence_sequence_radius`, as
  :func:`sira.failfast.sequential_flags` does), so looks are continuous;
* users convert with the scenario's base rate at the time they are assigned, the
  same for every arm (an A/A test): any flag is a false stop.

The "pooled" policy is the same loop with one period (counts pooled over the run,
as before periods existed) for comparison.

Reported per scenario (replications, mean ± standard error): false-stop rate (an arm
ever flagged), P(best) of arm 0 at the end outside [0.05, 0.95], and the number of
periods.

Run:  .venv/bin/python bench/sim_adaptive.py [--seeds 2000] [--users 40000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sira.bandit import REPUBLISH_STEP, BanditConfig, floored_weights  # noqa: E402
from sira.failfast import FailFastConfig, confidence_sequence_radius  # noqa: E402
from sira.posterior import prob_best_batch  # noqa: E402
from sira.strata import arm_estimates, difference_estimates, shared_periods  # noqa: E402

RECOMPUTE_EVERY = 500


@dataclass(frozen=True)
class Scenario:
    name: str
    base_rate: Callable[[np.ndarray], np.ndarray]  # fraction of the run elapsed -> rate
    bandit: bool = True


def constant(p: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.full_like(x, p)


def linear(start: float, end: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: start + (end - start) * x


def weekly(mean: float, amplitude: float, weeks: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: mean * (1.0 + amplitude * np.sin(2.0 * np.pi * weeks * x))


SCENARIOS = [
    Scenario("bandit, no drift, p = 0.03", constant(0.03)),
    Scenario("bandit, no drift, p = 0.10", constant(0.10)),
    Scenario("bandit, drift 4% -> 10%", linear(0.04, 0.10)),
    Scenario("bandit, weekly +-20% cycle around 7%", weekly(0.07, 0.20, 4.0)),
    Scenario("fixed 50/50 split, p = 0.10", constant(0.10), bandit=False),
]


@dataclass
class Outcome:
    false_stop: np.ndarray
    pbest_extreme: np.ndarray
    periods: np.ndarray


def posterior_best(users: np.ndarray, successes: np.ndarray, stratified: bool) -> np.ndarray:
    """P(best) of every arm (replications, arms) from (replications, periods, arms) counts."""
    if stratified:
        estimates = arm_estimates(users, successes, shared_periods(users))
        n, s = estimates["effective_users"], estimates["effective_successes"]
    else:
        n, s = users.sum(axis=1), successes.sum(axis=1)
    return prob_best_batch(s + 1.0, n - s + 1.0)


def flagged(users: np.ndarray, successes: np.ndarray, config: FailFastConfig) -> np.ndarray:
    """Whether the sequential rule flags an arm now, per replication (2 arms)."""
    estimates = difference_estimates(users, successes, 0, 1)
    radius = confidence_sequence_radius(
        estimates["variance"], estimates["effective_users"], config.alpha, config.target_samples
    )
    pooled = users.sum(axis=1)
    eligible = (pooled >= config.min_samples).all(axis=1)
    return eligible & (np.abs(estimates["estimate"]) > radius)


def run(scenario: Scenario, replications: int, total_users: int, stratified: bool, seed: int) -> Outcome:
    rng = np.random.default_rng(seed)
    arms = 2
    bandit_config = BanditConfig()
    failfast_config = FailFastConfig()
    steps = total_users // RECOMPUTE_EVERY
    max_periods = steps + 1 if stratified else 1
    users = np.zeros((replications, max_periods, arms))
    successes = np.zeros((replications, max_periods, arms))
    period = np.zeros(replications, dtype=int)
    weights = np.full((replications, arms), 1.0 / arms)
    rows = np.arange(replications)
    ever = np.zeros(replications, dtype=bool)
    for step in range(steps):
        elapsed = np.array([(step + 0.5) / steps])
        rate = float(scenario.base_rate(elapsed)[0])
        counts = rng.multinomial(RECOMPUTE_EVERY, weights)
        wins = rng.binomial(counts, rate)
        users[rows, period] += counts
        successes[rows, period] += wins
        used = int(period.max()) + 1
        ever |= flagged(users[:, :used], successes[:, :used], failfast_config)
        if not scenario.bandit:
            continue
        best = posterior_best(users[:, :used], successes[:, :used], stratified)
        new = floored_weights(best, np.ones_like(best, dtype=bool), bandit_config.floor)
        burn_in = (users[:, :used].sum(axis=1) < bandit_config.min_samples).any(axis=1)
        new[burn_in] = 1.0 / arms
        moved = np.abs(new - weights).max(axis=1) > REPUBLISH_STEP
        weights = np.where(moved[:, None], new, weights)
        if stratified:
            period = np.minimum(period + moved, max_periods - 1)
    used = int(period.max()) + 1
    best = posterior_best(users[:, :used], successes[:, :used], stratified)[:, 0]
    return Outcome(ever, (best < 0.05) | (best > 0.95), period + 1)


def share(values: np.ndarray) -> str:
    p = float(values.mean())
    return f"{p:.1%} ± {np.sqrt(p * (1 - p) / values.size):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2_000, help="replications per row")
    parser.add_argument("--users", type=int, default=40_000, help="users per experiment")
    parser.add_argument("--seed", type=int, default=147)
    parser.add_argument("--pooled", action="store_true", help="also run the pooled (pre-period) policy")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"\nA/A experiments, {args.seeds:,} replications per row, {args.users:,} users each, "
        f"recompute and look every {RECOMPUTE_EVERY} users (production defaults: "
        f"{FailFastConfig()}, {BanditConfig()}, republish step {REPUBLISH_STEP})\n"
    )
    print("| scenario | estimates | false stop | final P(best) outside [0.05, 0.95] | periods (median) |")
    print("|---|---|---|---|---|")
    for index, scenario in enumerate(SCENARIOS):
        policies = [True, False] if args.pooled else [True]
        for stratified in policies:
            outcome = run(scenario, args.seeds, args.users, stratified, seed=args.seed * 1000 + index)
            label = "stratified" if stratified else "pooled (before)"
            print(
                f"| {scenario.name} | {label} | {share(outcome.false_stop)} | "
                f"{share(outcome.pbest_extreme)} | {int(np.median(outcome.periods))} |"
            )
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

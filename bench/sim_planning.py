"""Does the planner's sequential sample size deliver its power? Simulate it.

For each scenario the planner (``sira.planning``) gives n users per arm; we simulate
``--replications`` experiments of n users per arm with the planned effect, and apply
SIRA's always-valid confidence sequence (``sira.failfast``, the production code) at the
planned n and at every 50 users before it. Reported: the share that excluded 0 at n
(target: the planned power) and by n (at least that), with binomial standard errors,
and the same with no effect (target: at most alpha).

    python bench/sim_planning.py --replications 4000
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sira.failfast import difference_confidence_sequence
from sira.planning import PlanInput, fixed_horizon, sequential

SCENARIOS = [
    PlanInput("proportion", 0.10, 0.30, power=0.8),
    PlanInput("proportion", 0.05, 0.50, power=0.8),
    PlanInput("proportion", 0.30, 0.10, power=0.9),
    PlanInput("proportion", 0.10, 0.30, power=0.8, arms=3),
]


def simulate(n: int, p1: float, p2: float, alpha: float, replications: int, rng: np.random.Generator) -> tuple[float, float]:
    looks = np.unique(np.append(np.arange(50, n + 1, 50), n))
    at_n = ever = 0
    chunk = 250
    for start in range(0, replications, chunk):
        size = min(chunk, replications - start)
        a = np.cumsum(rng.random((size, n)) < p1, axis=1)[:, looks - 1]
        b = np.cumsum(rng.random((size, n)) < p2, axis=1)[:, looks - 1]
        _, lower, upper = difference_confidence_sequence(a, looks, b, looks, alpha, 2_000)
        excluded = (lower > 0) | (upper < 0)
        at_n += int(excluded[:, -1].sum())
        ever += int(excluded.any(axis=1).sum())
    return at_n / replications, ever / replications


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replications", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=147)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    r = args.replications
    print(f"replications per cell: {r}; seed {args.seed}")
    print("| baseline | mde | arms | power | fixed n/arm | sequential n/arm | pair alpha | power at n (SE) | stopped by n (SE) | false stops by n, no effect (SE) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data in SCENARIOS:
        fixed = fixed_horizon(data)
        plan = sequential(data)
        n, alpha = plan.users_per_arm, plan.alpha_per_comparison
        p1, p2 = data.baseline, data.baseline * (1 + data.mde_relative)
        at_n, ever = simulate(n, p1, p2, alpha, r, rng)
        _, null_ever = simulate(n, p1, p1, alpha, r, rng)
        se = lambda p: math.sqrt(max(p * (1 - p), 1e-12) / r)
        print(
            f"| {data.baseline} | {data.mde_relative:+.0%} | {data.arms} | {data.power} | {fixed.users_per_arm:,} | {n:,} | "
            f"{alpha:.4f} | {at_n:.3f} ({se(at_n):.3f}) | {ever:.3f} ({se(ever):.3f}) | {null_ever:.4f} ({se(null_ever):.4f}) |"
        )


if __name__ == "__main__":
    main()

"""What does serving P(best) weights refreshed every 1,000 assignments cost, compared
with Thompson sampling that updates after every single user?

Two Bernoulli arms convert at 10% and 12%; T = 100,000 users per experiment.  Regret
is the expected conversions lost to not always serving the better arm,
sum over users of (0.12 - p_served), i.e. 0.02 x (users served the 10% arm).

1. uniform: a fixed 50/50 split (regret about 1,000 by construction);
2. instant Thompson sampling: one Beta draw per arm per user, posterior updated
   after every user (the unattainable ideal: conversions are never that prompt);
3. production cadence: weights from ``sira.bandit.bandit_weights`` (burn-in on the
   shares until each arm has 100 users, then P(best) with a 0.01 floor), recomputed
   every 1,000 assignments; in between, users are drawn from the current weights.

Run:  .venv/bin/python bench/sim_regret.py [--seeds 1000] [--investigate]

``--investigate`` also runs the production policy with other refresh intervals,
floors and burn-ins, to show which of them drives any gap to instant Thompson.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sira.bandit import BanditConfig, bandit_weights
from sira.stats import ProportionStats

RATES = np.array([0.10, 0.12])
GAP = RATES.max() - RATES
HORIZON = 100_000


def uniform_regret(seeds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    worse_pulls = rng.binomial(HORIZON, 0.5, size=seeds)
    return worse_pulls * GAP[0]


def instant_thompson_regret(seeds: int, seed: int) -> np.ndarray:
    """Per-user Thompson sampling, vectorised over seeds (one Python step per user)."""
    rng = np.random.default_rng([seed, 2])
    successes = np.zeros((seeds, 2))
    failures = np.zeros((seeds, 2))
    regret = np.zeros(seeds)
    rows = np.arange(seeds)
    for _ in range(HORIZON):
        arm = np.argmax(rng.beta(successes + 1.0, failures + 1.0), axis=1)
        converted = rng.random(seeds) < RATES[arm]
        successes[rows, arm] += converted
        failures[rows, arm] += ~converted
        regret += GAP[arm]
    return regret


def production_regret(
    seeds: int, seed: int, refresh_every: int = 1_000, config: BanditConfig | None = None
) -> np.ndarray:
    """P(best) weights recomputed every ``refresh_every`` users, arms drawn from them."""
    config = config or BanditConfig()
    rng = np.random.default_rng([seed, 3])
    regret = np.zeros(seeds)
    for s in range(seeds):
        users = np.zeros(2, dtype=np.int64)
        successes = np.zeros(2, dtype=np.int64)
        served = 0
        while served < HORIZON:
            batch = min(refresh_every, HORIZON - served)
            arms = [ProportionStats(int(n), int(c)) for n, c in zip(users, successes)]
            weights = bandit_weights(arms, [50.0, 50.0], [False, False], config).weights
            counts = rng.multinomial(batch, weights)
            users += counts
            successes += rng.binomial(counts, RATES)
            regret[s] += counts @ GAP
            served += batch
    return regret


def summary(regret: np.ndarray) -> tuple[float, float]:
    return float(regret.mean()), float(regret.std(ddof=1) / np.sqrt(regret.size))


def ratio_with_error(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """Ratio of means with a delta-method standard error (independent samples)."""
    (a, sa), (b, sb) = summary(numerator), summary(denominator)
    ratio = a / b
    return ratio, ratio * float(np.sqrt((sa / a) ** 2 + (sb / b) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1_000, help="simulated experiments per policy")
    parser.add_argument("--seed", type=int, default=147, help="base random seed")
    parser.add_argument("--investigate", action="store_true", help="vary refresh, floor, burn-in")
    args = parser.parse_args()

    started = time.perf_counter()
    results = {
        "uniform 50/50": uniform_regret(args.seeds, args.seed),
        "instant Thompson sampling": instant_thompson_regret(args.seeds, args.seed),
        "P(best) weights every 1,000 (production)": production_regret(args.seeds, args.seed),
    }
    if args.investigate:
        for refresh, floor, burn_in in [
            (1_000, 0.0, 100),
            (1_000, 0.001, 100),
            (1_000, 0.005, 100),
            (1_000, 0.01, 1_000),
            (10_000, 0.01, 100),
        ]:
            label = f"P(best) every {refresh:,}, floor {floor}, burn-in {burn_in}"
            results[label] = production_regret(
                args.seeds, args.seed, refresh, BanditConfig(min_samples=burn_in, floor=floor)
            )

    thompson = results["instant Thompson sampling"]
    print(
        f"\nRegret over T = {HORIZON:,} users, arms {RATES[0]:.2f} vs {RATES[1]:.2f}, "
        f"{args.seeds} seeded experiments per policy (mean ± standard error)\n"
    )
    print("| policy | regret | ratio to instant Thompson |")
    print("|---|---|---|")
    for label, regret in results.items():
        mean, error = summary(regret)
        ratio, ratio_error = ratio_with_error(regret, thompson)
        print(f"| {label} | {mean:,.1f} ± {error:,.1f} | {ratio:.2f} ± {ratio_error:.2f} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""How often does each fail-fast rule stop an experiment whose arms are all equal,
and how quickly does it catch an arm that really is worse?

Every simulated experiment is looked at every 100 users per arm, up to 20,000 users
per arm (200 looks), exactly as the dashboard would look at it while it refreshes.

* false-stop rate: all arms convert at 10%; the share of experiments in which any
  arm is *ever* flagged.  The default rule must keep this at or below 5%.
* samples to flag: one arm converts at 8%, the others at 10%; the median number of
  users per arm at the first look where the 8% arm is flagged (experiments where it
  never is count as "more than 20,000"), the share where it is flagged at all, and
  the share where a 10% arm is flagged instead (a wrong stop).

Run:  .venv/bin/python bench/sim_failfast.py [--seeds 1000] [--tune]

``--tune`` also scans the confidence sequence's target sample size (which sets the
mixture parameter rho) and prints the trade-off used to choose the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sira.failfast import FailFastConfig, difference_confidence_sequence
from sira.posterior import prob_best_batch

LOOK_EVERY = 100
MAX_PER_ARM = 20_000
LOOKS = MAX_PER_ARM // LOOK_EVERY
NEVER = np.iinfo(np.int64).max


def simulate_successes(rates, replications: int, rng: np.random.Generator) -> np.ndarray:
    """Cumulative successes at each look: (replications, arms, looks)."""
    rates = np.asarray(rates, dtype=float)
    increments = rng.binomial(LOOK_EVERY, rates[None, :, None], (replications, len(rates), LOOKS))
    return np.cumsum(increments, axis=2)


def users_at_looks() -> np.ndarray:
    return LOOK_EVERY * np.arange(1, LOOKS + 1)


def first_flag_sequential(successes: np.ndarray, config: FailFastConfig) -> np.ndarray:
    """First look at which each arm is flagged by the sequential rule: (replications, arms)."""
    replications, k, _ = successes.shape
    users = users_at_looks()[None, :]
    pair_alpha = config.alpha / (k * (k - 1) / 2)
    flagged = np.zeros(successes.shape, dtype=bool)
    eligible = users >= config.min_samples
    for i in range(k):
        for j in range(i + 1, k):
            _, lower, upper = difference_confidence_sequence(
                successes[:, i], users, successes[:, j], users, pair_alpha, config.target_samples
            )
            flagged[:, i] |= (lower > 0) & eligible  # p_j - p_i > 0: arm i is worse
            flagged[:, j] |= (upper < 0) & eligible  # p_j - p_i < 0: arm j is worse
    return np.where(flagged.any(axis=2), flagged.argmax(axis=2), NEVER)


def first_flag_bayesian(successes: np.ndarray, config: FailFastConfig) -> np.ndarray:
    """First look at which each arm is flagged by the seed's Bayesian rule.

    Looks are processed in order and an experiment drops out once any arm is
    flagged, which is what an auto-stop would do and keeps the run short.
    """
    replications, k, _ = successes.shape
    first = np.full((replications, k), NEVER)
    active = np.arange(replications)
    for look, users in enumerate(users_at_looks()):
        if users < config.min_samples or active.size == 0:
            continue
        wins = successes[active, :, look].astype(float)
        best = prob_best_batch(wins + 1.0, users - wins + 1.0)
        is_best = best == best.max(axis=1, keepdims=True)
        flagged = (1.0 - best > config.threshold) & ~is_best
        hit = flagged.any(axis=1)
        rows = active[hit]
        first[rows] = np.where(flagged[hit], look, NEVER)
        active = active[~hit]
    return first


def first_flags(rule: str, successes: np.ndarray, config: FailFastConfig) -> np.ndarray:
    if rule == "sequential":
        return first_flag_sequential(successes, config)
    return first_flag_bayesian(successes, config)


def false_stop_rate(first: np.ndarray) -> float:
    return float((first != NEVER).any(axis=1).mean())


def detection(first: np.ndarray, worse_arm: int = 0) -> tuple[float, float, float]:
    """(median users per arm to flag the worse arm, share flagged, share of wrong stops).

    A wrong stop is a better arm flagged before (or without) the worse one.
    """
    worse = first[:, worse_arm]
    others = np.delete(first, worse_arm, axis=1).min(axis=1)
    samples = np.where(worse != NEVER, (worse + 1.0) * LOOK_EVERY, np.inf)
    return (
        float(np.median(samples)),
        float((worse != NEVER).mean()),
        float((others < worse).mean()),
    )


def standard_error(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n))


def format_samples(median: float) -> str:
    return f"{median:,.0f}" if np.isfinite(median) else f"> {MAX_PER_ARM:,}"


def run_table(replications: int, seed: int, config: FailFastConfig) -> list[dict]:
    rows = []
    for rule in ("sequential", "bayesian"):
        for arms in (2, 4):
            rng = np.random.default_rng([seed, arms])  # same data for both rules
            rule_config = dataclasses.replace(config, rule=rule)
            null = simulate_successes([0.10] * arms, replications, rng)
            false_stop = false_stop_rate(first_flags(rule, null, rule_config))
            alternative = simulate_successes([0.08] + [0.10] * (arms - 1), replications, rng)
            median, power, wrong = detection(first_flags(rule, alternative, rule_config))
            rows.append(
                dict(
                    rule=rule,
                    arms=arms,
                    false_stop=false_stop,
                    false_stop_se=standard_error(false_stop, replications),
                    median=median,
                    power=power,
                    wrong=wrong,
                )
            )
    return rows


def print_table(rows: list[dict], replications: int, config: FailFastConfig) -> None:
    print(
        f"\nFail-fast, {replications:,} replications per row, "
        f"look every {LOOK_EVERY} users per arm up to {MAX_PER_ARM:,} "
        f"(alpha={config.alpha}, threshold={config.threshold}, "
        f"target_samples={config.target_samples:,}, min_samples={config.min_samples})\n"
    )
    header = (
        "| rule       | arms | false stop, all p=0.10 | median n/arm to flag the 0.08 arm "
        "| 0.08 arm flagged by 20k | wrong arm flagged first |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(
            f"| {row['rule']:<10} | {row['arms']:>4} | "
            f"{row['false_stop']:>6.1%} ± {row['false_stop_se']:.1%}         | "
            f"{format_samples(row['median']):>33} | {row['power']:>23.1%} | {row['wrong']:>23.1%} |"
        )


def tune(replications: int, seed: int, config: FailFastConfig) -> None:
    """Scan target_samples for the sequential rule (validity holds for every value)."""
    print("\nSequential rule, scan of target_samples (where the CS is tightest):\n")
    print(
        "| target_samples | false stop 2 arms | false stop 4 arms | median n/arm 2 arms "
        "| median n/arm 4 arms | flagged by 20k (2 / 4 arms) |"
    )
    print("|---|---|---|---|---|---|")
    data = {}
    for arms in (2, 4):
        rng = np.random.default_rng([seed, arms])
        data[arms] = (
            simulate_successes([0.10] * arms, replications, rng),
            simulate_successes([0.08] + [0.10] * (arms - 1), replications, rng),
        )
    for target in (250, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 20_000):
        trial = dataclasses.replace(config, target_samples=target)
        cells = {}
        for arms, (null, alternative) in data.items():
            cells[arms] = (
                false_stop_rate(first_flag_sequential(null, trial)),
                *detection(first_flag_sequential(alternative, trial)),
            )
        print(
            f"| {target:>6,} | {cells[2][0]:.1%} | {cells[4][0]:.1%} | "
            f"{format_samples(cells[2][1])} | {format_samples(cells[4][1])} | "
            f"{cells[2][2]:.1%} / {cells[4][2]:.1%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1_000, help="replications per row")
    parser.add_argument("--seed", type=int, default=147, help="base random seed")
    parser.add_argument("--tune", action="store_true", help="also scan target_samples")
    args = parser.parse_args()
    config = FailFastConfig()
    started = time.perf_counter()
    rows = run_table(args.seeds, args.seed, config)
    print_table(rows, args.seeds, config)
    if args.tune:
        tune(args.seeds, args.seed, config)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

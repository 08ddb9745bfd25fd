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

from sira.bandit import REPUBLISH_STEP, BanditConfig, floored_weights
from sira.compare import compare_rates
from sira.failfast import (
    DEFAULT_GUARDRAIL_MARGIN,
    FailFastConfig,
    confidence_sequence_radius,
    guardrail_flags,
    guardrail_ratio_flags,
)
from sira.insights import SegmentSummary, VariantSummary, suggestions
from sira.posterior import prob_best_batch
from sira.stats import ProportionStats, relative_uplift
from sira.strata import PeriodTable, arm_estimates, difference_estimates, shared_periods

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
    p = float(np.mean(values))
    return f"{p:.1%} ± {np.sqrt(p * (1 - p) / np.size(values)):.1%}"


# --- guardrails: a variant that sells more with the same refund habits -----------------


def guardrail_false_pauses(replications: int, total_users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed 50/50 split, conversion 10% vs 15%, 5% of buyers refund on both sides; looks
    every RECOMPUTE_EVERY users.  Returns (paused by the ratio rule, by the old rate rule)."""
    rng = np.random.default_rng(seed)
    config = FailFastConfig()
    steps = total_users // RECOMPUTE_EVERY
    half = RECOMPUTE_EVERY // 2
    ratio_paused = np.zeros(replications, dtype=bool)
    rate_paused = np.zeros(replications, dtype=bool)
    for r in range(replications):
        buyers = np.cumsum(rng.binomial(half, [0.10, 0.15], size=(steps, 2)), axis=0)
        refunds = np.cumsum(rng.binomial(np.diff(np.vstack([[0, 0], buyers]), axis=0), 0.05), axis=0)
        for step in range(steps):
            users = [[half * (step + 1)] * 2]
            bad = PeriodTable(users, [refunds[step]])
            if not ratio_paused[r]:
                ratio_paused[r] = bool(guardrail_ratio_flags(bad, 0, config, DEFAULT_GUARDRAIL_MARGIN, PeriodTable(users, [buyers[step]])))
            if not rate_paused[r]:
                rate_paused[r] = bool(guardrail_flags(bad, 0, config))
            if ratio_paused[r] and rate_paused[r]:
                break
    return ratio_paused, rate_paused


# --- uplift interval coverage ----------------------------------------------------------


def uplift_coverage(replications: int, seed: int, users: int = 200, base: float = 0.05) -> list[tuple[float, float, float, float, int]]:
    """(true uplift, MOVER-R coverage, Newcombe coverage, old delta-method coverage, undefined)."""
    rng = np.random.default_rng(seed)
    rows = []
    for uplift in (0.0, 0.2, 0.5):
        p_v = base * (1 + uplift)
        control = rng.binomial(users, base, replications)
        variant = rng.binomial(users, p_v, replications)
        ratio_hits = difference_hits = delta_hits = defined = 0
        for s_c, s_v in zip(control, variant):
            table = PeriodTable([[users, users]], [[s_c, s_v]])
            difference, relative = compare_rates(table, 0, 1)
            difference_hits += difference.lower <= p_v - base <= difference.upper
            if relative.estimate is None:
                continue
            defined += 1
            ratio_hits += relative.lower <= uplift <= (relative.upper if relative.upper is not None else np.inf)
            old = relative_uplift(ProportionStats(users, int(s_c)), ProportionStats(users, int(s_v)))
            delta_hits += old.interval.lower <= uplift <= old.interval.upper
        rows.append((uplift, ratio_hits / defined, difference_hits / replications, delta_hits / defined, replications - defined))
    return rows


# --- roll-out suggestions in A/A under continuous looks ------------------------------------


def rollout_suggestions(replications: int, total_users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed 50/50 A/A at 10%, the insights computed at every look.  Returns (suggested
    by the production rule, suggested by P(best) >= 0.95 alone, the rule before)."""
    rng = np.random.default_rng(seed)
    steps = total_users // RECOMPUTE_EVERY
    half = RECOMPUTE_EVERY // 2
    wins = np.cumsum(rng.binomial(half, 0.10, size=(replications, steps, 2)), axis=1).astype(float)
    users = half * np.arange(1, steps + 1, dtype=float)
    best = prob_best_batch(wins.reshape(-1, 2) + 1.0, (users[None, :, None] - wins).reshape(-1, 2) + 1.0)
    best = best.reshape(replications, steps, 2)
    before = (best.max(axis=2) >= 0.95).any(axis=1)
    now = np.zeros(replications, dtype=bool)
    for r in range(replications):
        for step in np.flatnonzero(best[r].max(axis=1) >= 0.95):  # only these looks can suggest
            summaries = [
                VariantSummary("control", {"k": 0}, True, int(users[step]), int(wins[r, step, 0]), float(best[r, step, 0])),
                VariantSummary("variant", {"k": 1}, False, int(users[step]), int(wins[r, step, 1]), float(best[r, step, 1])),
            ]
            if any(s["kind"] == "roll_out_and_iterate" for s in suggestions(summaries)):
                now[r] = True
                break
    return now, before


# --- targeted follow-ups in A/A, one look -------------------------------------------------


def targeted_suggestions(replications: int, seed: int, users_per_arm: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """A/A at 10% with 10 countries, 5 languages and 3 devices drawn uniformly; one look.
    Returns (suggested with Benjamini–Hochberg, suggested without it)."""
    rng = np.random.default_rng(seed)
    dimensions = {"country": 10, "lang": 5, "device": 3}
    with_bh = np.zeros(replications, dtype=bool)
    without = np.zeros(replications, dtype=bool)
    for r in range(replications):
        segments, arms = [], []
        for arm in ("control", "variant"):
            converted = rng.random(users_per_arm) < 0.10
            arms.append(VariantSummary(arm, {"k": arm}, arm == "control", users_per_arm, int(converted.sum()), 0.5))
            for key, values in dimensions.items():
                value = rng.integers(values, size=users_per_arm)
                counts = np.bincount(value, minlength=values)
                hits = np.bincount(value, weights=converted, minlength=values)
                segments += [SegmentSummary(key, str(v), arm, int(counts[v]), int(hits[v])) for v in range(values)]
        with_bh[r] = any(s["kind"] == "targeted_follow_up" for s in suggestions(arms, segments))
        without[r] = any(s["kind"] == "targeted_follow_up" for s in suggestions(arms, segments, segment_fdr=1.0))
    return with_bh, without


# --- regret with delayed conversions ---------------------------------------------------------


def delayed_regret(
    replications: int, total_users: int, seed: int, mean_delay: float, window: float | None, stratified: bool = True
) -> np.ndarray:
    """Bandit 0.10 vs 0.12; each conversion arrives an exponential delay (in users) after
    its assignment.  The bandit decides on matured users (assigned at least ``window``
    users ago) with the conversions inside the window, per period; ``window=None`` is the
    policy before windows: every user so far in the denominator, conversions seen so far
    in the numerator, pooled.  Regret = 0.02 x users served the 10% arm."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.10, 0.12])
    config = BanditConfig()
    steps = total_users // RECOMPUTE_EVERY
    rows = np.arange(replications)
    weights = np.full((replications, 2), 0.5)
    regret = np.zeros(replications)
    batch_users = np.zeros((replications, steps, 2))
    batch_in_window = np.zeros((replications, steps, 2))
    arrivals = np.zeros((replications, steps + 1, 2))  # conversions seen at each step
    batch_period = np.zeros((replications, steps), dtype=int)
    period = np.zeros(replications, dtype=int)
    matured_users = np.zeros((replications, steps + 1, 2))
    matured_wins = np.zeros((replications, steps + 1, 2))
    window_steps = 0 if window is None else int(np.ceil(window / RECOMPUTE_EVERY))
    for step in range(steps):
        counts = rng.multinomial(RECOMPUTE_EVERY, weights)
        regret += counts[:, 0] * 0.02
        conversions = rng.binomial(counts, rates)
        batch_users[:, step] = counts
        batch_period[:, step] = period
        # delays of this batch's conversions, in steps after assignment
        total = int(conversions.sum())
        delays = rng.exponential(mean_delay, total) if mean_delay > 0 else np.zeros(total)
        rep_index = np.repeat(np.repeat(rows, 2), conversions.reshape(-1))
        arm_index = np.repeat(np.tile([0, 1], replications), conversions.reshape(-1))
        if window is not None:
            inside = delays <= window
            np.add.at(batch_in_window, (rep_index[inside], step, arm_index[inside]), 1)
        arrive = np.minimum(step + np.floor(delays / RECOMPUTE_EVERY).astype(int), steps)
        np.add.at(arrivals, (rep_index, arrive, arm_index), 1)
        if window is None:
            users = batch_users[:, : step + 1].sum(axis=1)[:, None, :]
            wins = np.minimum(arrivals[:, : step + 1].sum(axis=1)[:, None, :], users)
        else:
            ripe = step - window_steps
            if ripe >= 0:
                np.add.at(matured_users, (rows, batch_period[:, ripe]), batch_users[:, ripe])
                np.add.at(matured_wins, (rows, batch_period[:, ripe]), batch_in_window[:, ripe])
            used = int(period.max()) + 1
            users, wins = matured_users[:, :used], matured_wins[:, :used]
            if not stratified:
                users, wins = users.sum(axis=1, keepdims=True), wins.sum(axis=1, keepdims=True)
        best = posterior_best(users, wins, stratified=users.shape[1] > 1)
        new = floored_weights(best, np.ones_like(best, dtype=bool), config.floor)
        burn_in = (users.sum(axis=1) < config.min_samples).any(axis=1)
        new[burn_in] = 0.5
        moved = np.abs(new - weights).max(axis=1) > REPUBLISH_STEP
        weights = np.where(moved[:, None], new, weights)
        if window is not None:
            period = np.minimum(period + moved, steps)
    return regret


def mean_and_error(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> str:
    (a, sa), (b, sb) = mean_and_error(numerator), mean_and_error(denominator)
    value = a / b
    return f"{value:.2f} ± {value * np.sqrt((sa / a) ** 2 + (sb / b) ** 2):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2_000, help="replications per row")
    parser.add_argument("--users", type=int, default=40_000, help="users per experiment")
    parser.add_argument("--seed", type=int, default=147)
    parser.add_argument("--pooled", action="store_true", help="also run the pooled (pre-period) policy")
    parser.add_argument(
        "--only", nargs="*", default=["failfast", "guardrail", "uplift", "rollout", "targeted", "regret"],
        help="sections to run",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    if "failfast" in args.only:
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
                    f"{share(outcome.pbest_extreme)} | {int(np.median(outcome.periods))} |",
                    flush=True,
                )
    if "guardrail" in args.only:
        ratio_paused, rate_paused = guardrail_false_pauses(args.seeds, args.users, args.seed + 1)
        print(
            f"\nGuardrail, conversion 10% vs 15% with 5% of buyers refunding on both sides, fixed split, "
            f"{args.users:,} users, look every {RECOMPUTE_EVERY}, {args.seeds:,} replications: variant paused "
            f"{share(ratio_paused)} (refunds per buyer, margin {DEFAULT_GUARDRAIL_MARGIN:.0%}) vs "
            f"{share(rate_paused)} (refunds per user, no margin: the rule before)",
            flush=True,
        )
    if "uplift" in args.only:
        print(f"\nInterval coverage, 200 users per arm, 5% base rate, {args.seeds:,} replications per row\n")
        print("| true uplift | uplift (MOVER-R) | difference (Newcombe) | uplift, delta method (before) | undefined (control 0) |")
        print("|---|---|---|---|---|")
        for uplift, mover, newcombe, delta, undefined in uplift_coverage(args.seeds, args.seed + 2):
            print(f"| {uplift:+.0%} | {mover:.1%} | {newcombe:.1%} | {delta:.1%} | {undefined} |", flush=True)
    if "rollout" in args.only:
        now, before = rollout_suggestions(args.seeds, args.users, args.seed + 3)
        print(
            f"\nRoll-out suggested at some look of an A/A test (50/50, p = 0.10, {args.users:,} users, look every "
            f"{RECOMPUTE_EVERY}), {args.seeds:,} replications: {share(now)} now vs {share(before)} with P(best) >= 0.95 alone",
            flush=True,
        )
    if "targeted" in args.only:
        with_bh, without = targeted_suggestions(args.seeds, args.seed + 4)
        print(
            f"\nTargeted follow-up suggested in an A/A test (20,000 users per arm, 10 countries, 5 languages, "
            f"3 devices, one look), {args.seeds:,} replications: {share(with_bh)} with Benjamini–Hochberg vs "
            f"{share(without)} without",
            flush=True,
        )
    if "regret" in args.only:
        horizon = 100_000
        print(
            f"\nRegret, bandit 0.10 vs 0.12, {horizon:,} users, recompute every {RECOMPUTE_EVERY}, "
            f"exponential conversion delays (in users), {args.seeds:,} replications (mean ± s.e.)\n"
        )
        print("| delay (mean users) | policy | regret | ratio to no delay |")
        print("|---|---|---|---|")
        baseline = delayed_regret(args.seeds, horizon, args.seed + 5, 0.0, 0.0)
        print(f"| 0 | production, no delay | {mean_and_error(baseline)[0]:.1f} ± {mean_and_error(baseline)[1]:.1f} | 1.00 |")
        for delay in (3_000, 10_000):
            for label, window in (("all users so far, pooled (before)", None), ("window = mean delay", float(delay)),
                                  ("window = 2 x mean delay", 2.0 * delay)):
                regret = delayed_regret(args.seeds, horizon, args.seed + 5, float(delay), window)
                mean, error = mean_and_error(regret)
                print(f"| {delay:,} | {label} | {mean:.1f} ± {error:.1f} | {ratio(regret, baseline)} |", flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

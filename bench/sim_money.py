"""Money statistics by simulation, through the production code (``sira.money``).

* CUPED: per-user metric y with a pre-exposure covariate x of correlation rho (0.7 by
  default), a true +2% uplift; the relative-uplift interval of the plain per-user mean
  versus the CUPED-adjusted one (:func:`sira.money.per_user_analysis`, capping off).
  Theory: the width shrinks by 1 - sqrt(1 - rho^2) (29% at rho = 0.7); coverage of
  the true uplift must stay >= 94%.
* Capping: log-normal revenue per converter (heavy tail), 10% of users convert, a true
  +5% multiplicative uplift and an A/A (no effect); coverage and width of the per-user
  revenue uplift interval uncapped and capped at the 99.5th (and 99th) percentile.
  Coverage is of the uncapped truth (the mean revenue per user), the number a finance
  team means.
* Ratio metric: revenue per converter (delta method, :func:`sira.money.ratio_uplift`),
  coverage of the true ratio uplift under the same log-normal model.

Every figure comes with its replication count and standard error.

Run:  .venv/bin/python bench/sim_money.py [--reps 2000] [--json bench/results/money.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sira.money import ArmValues, PairStats, per_user_analysis, ratio_uplift


def _arm(y: np.ndarray, x: np.ndarray, n: int | None = None) -> ArmValues:
    """As the analysis builds it: users without an amount may be left out of y and x (they are zeros)."""
    return ArmValues(int(y.size) if n is None else n, y, x, float(x.sum()), float(x @ x))


def _share(hits: list[bool]) -> tuple[float, float]:
    p = float(np.mean(hits))
    return p, math.sqrt(p * (1 - p) / len(hits))


def _mean(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))


def simulate_cuped(reps: int, n: int, rho: float, uplift: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mean, sd = 20.0, 6.0
    plain_hits, cuped_hits, plain_widths, cuped_widths, ratios, reductions = [], [], [], [], [], []
    for _ in range(reps):
        arms = []
        for treated in (False, True):
            x = rng.normal(0.0, 1.0, n)
            y = mean + sd * (rho * x + math.sqrt(1 - rho * rho) * rng.normal(0.0, 1.0, n))
            if treated:
                y = y + mean * uplift
            arms.append(_arm(y, x + 5.0))  # any offset: CUPED centres the covariate
        _, results = per_user_analysis(arms, control=0, cap_percentile=None)
        plain, adjusted = results[1].uplift, results[1].cuped_uplift
        plain_hits.append(plain.lower <= uplift <= plain.upper)
        cuped_hits.append(adjusted.lower <= uplift <= adjusted.upper)
        plain_widths.append(plain.upper - plain.lower)
        cuped_widths.append(adjusted.upper - adjusted.lower)
        ratios.append(cuped_widths[-1] / plain_widths[-1])
        reductions.append(results[1].cuped.variance_reduction)
    shrink, shrink_se = _mean([1 - r for r in ratios])
    return {
        "reps": reps, "users_per_arm": n, "rho": rho, "true_uplift": uplift,
        "coverage_plain": _share(plain_hits), "coverage_cuped": _share(cuped_hits),
        "mean_width_plain": _mean(plain_widths), "mean_width_cuped": _mean(cuped_widths),
        "width_shrink": (shrink, shrink_se), "theory_shrink": 1 - math.sqrt(1 - rho * rho),
        "variance_reduction": _mean(reductions),
    }


def _revenue(rng: np.random.Generator, n: int, rate: float, mu: float, sigma: float, scale: float) -> np.ndarray:
    converted = rng.random(n) < rate
    y = np.zeros(n)
    y[converted] = rng.lognormal(mu, sigma, int(converted.sum())) * scale
    return y


def simulate_capping(reps: int, n: int, sigma: float, uplift: float, percentiles: list[float], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rate, mu = 0.10, 3.0
    truth = uplift  # multiplicative effect: the per-user mean moves by exactly this
    out: dict = {"reps": reps, "users_per_arm": n, "conversion_rate": rate, "lognormal_mu": mu,
                 "lognormal_sigma": sigma, "true_uplift": truth, "settings": {}}
    hits: dict[str, list[bool]] = {"uncapped": []} | {f"p{p}": [] for p in percentiles}
    widths: dict[str, list[float]] = {k: [] for k in hits}
    estimates: dict[str, list[float]] = {k: [] for k in hits}
    ratio_hits: list[bool] = []
    for _ in range(reps):
        control = _revenue(rng, n, rate, mu, sigma, 1.0)
        variant = _revenue(rng, n, rate, mu, sigma, 1.0 + uplift)
        buyers_c, buyers_v = control[control > 0], variant[variant > 0]
        arms = [_arm(buyers_c, np.zeros(buyers_c.size), n), _arm(buyers_v, np.zeros(buyers_v.size), n)]
        for key in hits:
            percentile = None if key == "uncapped" else float(key[1:])
            _, results = per_user_analysis(arms, control=0, cap_percentile=percentile)
            u = results[1].uplift
            hits[key].append(u.lower <= truth <= u.upper)
            widths[key].append(u.upper - u.lower)
            estimates[key].append(u.estimate)
        # Revenue per converter: the same multiplicative uplift.
        r = ratio_uplift(PairStats.from_arrays(control, (control > 0).astype(float)),
                         PairStats.from_arrays(variant, (variant > 0).astype(float)))
        ratio_hits.append(r.lower <= truth <= r.upper)
    for key in hits:
        out["settings"][key] = {
            "coverage": _share(hits[key]),
            "mean_width": _mean(widths[key]),
            "mean_estimate": _mean(estimates[key]),
        }
    out["revenue_per_converter_coverage"] = _share(ratio_hits)
    return out


def _fmt(pair: tuple[float, float], pct: bool = True) -> str:
    value, se = pair
    return f"{value * 100:.1f}% ± {se * 100:.1f}" if pct else f"{value:.4f} ± {se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    scenarios = {
        "cuped": lambda: simulate_cuped(args.reps, 2000, 0.7, 0.02, seed=1),
        "capping_aa": lambda: simulate_capping(args.reps, 20000, 1.5, 0.0, [99.5, 99.0], seed=2),
        "capping_effect": lambda: simulate_capping(args.reps, 20000, 1.5, 0.05, [99.5, 99.0], seed=3),
        "capping_heavy_aa": lambda: simulate_capping(args.reps, 2000, 2.0, 0.0, [99.5, 99.0], seed=4),
    }
    report: dict = {}
    for name, run in scenarios.items():
        report[name] = run()
        _print(name, report[name])
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    report["seconds"] = round(time.monotonic() - started, 1)
    print(f"{report['seconds']} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _print(name: str, r: dict) -> None:
    if name == "cuped":
        print(f"CUPED rho={r['rho']}, {r['users_per_arm']} users/arm, {r['reps']} reps, true uplift {r['true_uplift']:+.0%}")
        print(f"  coverage plain {_fmt(r['coverage_plain'])}, CUPED {_fmt(r['coverage_cuped'])}")
        print(f"  width shrink {_fmt(r['width_shrink'])} (theory {r['theory_shrink'] * 100:.1f}%), "
              f"variance removed {_fmt(r['variance_reduction'])}", flush=True)
        return
    print(f"{name}: lognormal sigma={r['lognormal_sigma']}, {r['users_per_arm']} users/arm, "
          f"{r['reps']} reps, true uplift {r['true_uplift']:+.0%}")
    for key, s in r["settings"].items():
        print(f"  {key:>8}: coverage {_fmt(s['coverage'])}, width {_fmt(s['mean_width'], False)}, "
              f"mean estimate {_fmt(s['mean_estimate'], False)}")
    print(f"  revenue per converter (delta method) coverage {_fmt(r['revenue_per_converter_coverage'])}", flush=True)


if __name__ == "__main__":
    main()

"""A variant against control on a rate: difference and relative uplift, each with a
fixed-horizon 95% interval and an always-valid one.

The dashboard is watched continuously, so a "roll out" decision read off it is a
decision taken at a data-dependent time; only the always-valid bounds keep their
95% promise then.  The fixed-horizon ones stay for the planned single look:

* difference p_v − p_c: Newcombe's hybrid score interval; always-valid: the
  period-stratified confidence sequence of :mod:`sira.failfast`;
* relative uplift p_v / p_c − 1: the MOVER-R score interval for a ratio; always-valid:
  the box [l_v / u_c − 1, u_v / l_c − 1] from each arm's own confidence sequence at
  alpha/2 (so both hold together with probability ≥ 1 − alpha at every look).

Both are computed on the pair's period-stratified counts (:mod:`sira.strata`), the
raw counts for a split that never changed.  A control without successes makes the
uplift undefined: ``None`` with a message, never a sign-flipped or zero-width interval.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import numpy.typing as npt

from sira.failfast import FailFastConfig, confidence_sequence_radius
from sira.stats import Comparison, Interval, newcombe_difference, ratio_interval
from sira.strata import PeriodTable, arm_estimates, shared_periods

__all__ = ["compare_rates"]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compare_rates(
    table: PeriodTable,
    control_index: int,
    variant_index: int,
    confidence: float = 0.95,
    target_samples: float = FailFastConfig.target_samples,
) -> tuple[Comparison, Comparison]:
    """(difference, uplift) of ``variant_index`` against ``control_index``."""
    alpha = 1.0 - confidence
    pair = table.select([control_index, variant_index])
    control, variant = pair.effective()
    if control.users <= 0 or variant.users <= 0:
        empty = Comparison(None, None, None, None, None, "no users yet in control or variant")
        return empty, empty
    difference = pair.difference(0, 1)
    fixed = newcombe_difference(control.successes, control.users, variant.successes, variant.users, confidence)
    radius = float(confidence_sequence_radius(difference.variance, difference.effective_users, alpha, target_samples))
    difference_result = Comparison(
        estimate=difference.estimate,
        lower=fixed.lower,
        upper=fixed.upper,
        always_valid_lower=max(difference.estimate - radius, -1.0),
        always_valid_upper=min(difference.estimate + radius, 1.0),
    )
    if control.successes <= 0:
        undefined = "control has no successes yet: the relative uplift is undefined"
        return difference_result, Comparison(None, None, None, None, None, undefined)

    ratio = ratio_interval(control.successes, control.users, variant.successes, variant.users, confidence)
    shared = arm_estimates(pair.users, pair.successes, _shared_mask(pair))
    radii = confidence_sequence_radius(shared["variance"], shared["effective_users"], alpha / 2.0, target_samples)
    rate_c, rate_v = control.rate, variant.rate
    lower_c, upper_c = max(rate_c - radii[0], 0.0), min(rate_c + radii[0], 1.0)
    lower_v, upper_v = max(rate_v - radii[1], 0.0), min(rate_v + radii[1], 1.0)
    message = ""
    always_upper = None
    if lower_c > 0:
        always_upper = upper_v / lower_c - 1.0
    else:
        message = "control's rate is not yet bounded away from 0: the always-valid uplift has no upper bound"
    return difference_result, Comparison(
        estimate=rate_v / rate_c - 1.0,
        # control.successes > 0 here, so ratio_interval returned an Interval.
        lower=cast(Interval, ratio).lower - 1.0,
        upper=_finite(cast(Interval, ratio).upper - 1.0),
        always_valid_lower=lower_v / upper_c - 1.0,
        always_valid_upper=always_upper,
        message=message,
    )


def _shared_mask(pair: PeriodTable) -> npt.NDArray[np.bool_] | None:
    return shared_periods(pair.users) if pair.periods > 1 else None

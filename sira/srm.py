"""Sample-ratio mismatch: were users split the way the allocation says?

:func:`srm_test` compares assigned users with the configured shares (a fixed split);
:func:`srm_test_periods` compares them, period by period, with the probabilities
logged on the assignments (bandits, pauses, restarts), pooled into one statistic.
Definitions in ``docs/statistics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

__all__ = ["SrmResult", "srm_test", "srm_test_periods"]


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch check: were users split the way the shares say?"""

    chi2: float
    p_value: float
    flagged: bool
    message: str = ""



def srm_test(
    observed_users: Sequence[int],
    traffic_shares: Sequence[float],
    threshold: float = 0.001,
) -> SrmResult:
    """Chi-square goodness-of-fit of assigned users against the configured shares.

    Shares are percentages but only their ratios matter.  Arms with a zero share are
    left out of the test (their expected count is zero, which the chi-square statistic
    cannot take); if such an arm nevertheless received users the message says so,
    because that is a bug in assignment rather than a sampling accident.  The default
    threshold of 0.001 is the usual one for SRM: the check runs on every refresh, so
    a 0.05 threshold would fire on healthy experiments.

    Only meaningful with fixed shares; under a bandit the split is meant to drift.
    """
    if len(observed_users) != len(traffic_shares):
        raise ValueError("observed_users and traffic_shares must have the same length")
    notes = []
    counted = [(o, s) for o, s in zip(observed_users, traffic_shares) if s > 0]
    stray = sum(o for o, s in zip(observed_users, traffic_shares) if s <= 0)
    if stray:
        notes.append(f"{stray} users were assigned to arms with a zero share and are left out")
    if len(counted) < 2:
        notes.insert(0, "fewer than two arms with traffic: nothing to compare")
        return SrmResult(0.0, 1.0, False, "; ".join(notes))
    total_users = sum(o for o, _ in counted)
    if total_users == 0:
        notes.insert(0, "no users yet")
        return SrmResult(0.0, 1.0, False, "; ".join(notes))
    total_share = sum(s for _, s in counted)
    chi2 = 0.0
    for observed, share in counted:
        expected = total_users * share / total_share
        chi2 += (observed - expected) ** 2 / expected
    p_value = float(special.chdtrc(len(counted) - 1, chi2))
    flagged = p_value < threshold
    if flagged:
        notes.insert(0, f"sample ratio mismatch: p = {p_value:.2g} < {threshold}")
    return SrmResult(chi2, p_value, flagged, "; ".join(notes))


def srm_test_periods(
    users: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    fallback_shares: Sequence[float] | None = None,
    threshold: float = 0.001,
) -> SrmResult:
    """SRM check against the probabilities logged per allocation period.

    ``users[k][a]`` users reached arm a in period k, where the assignment path drew a
    with probability ``probabilities[k][a]`` (NaN where no row of that cell exists to
    say).  Within a period the counts are multinomial, so over the run the observed
    totals O have mean E = Σ_k N_k π_k and covariance C = Σ_k N_k (diag π_k − π_k π_kᵀ);
    the statistic is the quadratic form (O − E)ᵀ C⁺ (O − E) on the arms with a positive
    expected count, chi-square with rank(C) degrees of freedom.  With one period it is
    Pearson's statistic of :func:`srm_test`.  This holds for a bandit (its weights are
    chosen before the period's users arrive) and after a pause, where the paused arm's
    probability is 0 and only the arms still live are compared.

    A probability missing for an arm that got nobody in a period is the period's
    remaining mass, shared among such arms; a period with no logged probability at all
    (rows from before periods) uses ``fallback_shares``.
    """
    users = np.asarray(users, dtype=float)
    probabilities = np.array(probabilities, dtype=float)
    if users.ndim != 2 or users.shape != probabilities.shape:
        raise ValueError("users and probabilities must be 2-d arrays (periods, arms) of the same shape")
    periods, k = users.shape
    for period in range(periods):
        row = probabilities[period]
        missing = np.isnan(row)
        if missing.all():
            if fallback_shares is None:
                row[:] = 1.0 / k
            else:
                shares = np.clip(np.asarray(fallback_shares, dtype=float), 0.0, None)
                row[:] = shares / shares.sum() if shares.sum() > 0 else 1.0 / k
        elif missing.any():
            row[missing] = max(1.0 - float(row[~missing].sum()), 0.0) / int(missing.sum())
        total = row.sum()
        if total > 0:
            row /= total
    if periods == 1:
        return srm_test([int(round(u)) for u in users[0]], list(probabilities[0] * 100.0), threshold)
    sizes = users.sum(axis=1)
    observed = users.sum(axis=0)
    expected = (sizes[:, None] * probabilities).sum(axis=0)
    notes = []
    live = expected > 0
    stray = int(observed[~live].sum())
    if stray:
        notes.append(f"{stray} users were assigned to arms with a zero probability and are left out")
    if live.sum() < 2 or observed[live].sum() == 0:
        notes.insert(0, "fewer than two arms with traffic: nothing to compare" if live.sum() < 2 else "no users yet")
        return SrmResult(0.0, 1.0, False, "; ".join(notes))
    p = probabilities[:, live]
    covariance = np.einsum("k,ka,ab->ab", sizes, p, np.eye(int(live.sum()))) - np.einsum("k,ka,kb->ab", sizes, p, p)
    deviation = observed[live] - expected[live]
    chi2 = float(deviation @ np.linalg.pinv(covariance, rcond=1e-10, hermitian=True) @ deviation)
    dof = int(np.linalg.matrix_rank(covariance, tol=1e-9 * max(float(np.abs(covariance).max()), 1.0)))
    p_value = float(special.chdtrc(max(dof, 1), chi2))
    flagged = p_value < threshold
    if flagged:
        notes.insert(0, f"sample ratio mismatch: p = {p_value:.2g} < {threshold}")
    return SrmResult(chi2, p_value, flagged, "; ".join(notes))

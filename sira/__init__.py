"""SIRA: the statistics behind Molam Experiments, as pure computation.

Sufficient statistics in, result dataclasses out; no I/O and no web, database,
cache or queue imports (``tests/sira/test_purity.py`` enforces it), so the same code
serves the API, the Celery tasks and the simulations in ``bench/``.  Definitions
and formulas: ``docs/statistics.md``.
"""

from sira.bandit import BanditConfig, WeightsResult, bandit_weights, draw_arm, posteriors
from sira.failfast import (
    ArmFlag,
    FailFastConfig,
    bayesian_flags,
    difference_confidence_sequence,
    evaluate,
    guardrail_flags,
    sequential_flags,
)
from sira.insights import SegmentSummary, VariantSummary, recommendation, suggestions
from sira.posterior import prob_beat_control, prob_best, prob_best_batch
from sira.srm import SrmResult, srm_test, srm_test_periods
from sira.stats import (
    Interval,
    ProportionStats,
    SampleStats,
    UpliftResult,
    beta_credible_interval,
    d7_retention,
    mean_interval,
    relative_uplift,
    required_sample_size,
    wilson_interval,
)

__all__ = [
    "ArmFlag",
    "BanditConfig",
    "FailFastConfig",
    "Interval",
    "ProportionStats",
    "SampleStats",
    "SegmentSummary",
    "SrmResult",
    "UpliftResult",
    "VariantSummary",
    "WeightsResult",
    "bandit_weights",
    "bayesian_flags",
    "beta_credible_interval",
    "d7_retention",
    "difference_confidence_sequence",
    "draw_arm",
    "evaluate",
    "guardrail_flags",
    "mean_interval",
    "posteriors",
    "prob_beat_control",
    "prob_best",
    "prob_best_batch",
    "recommendation",
    "relative_uplift",
    "required_sample_size",
    "sequential_flags",
    "srm_test",
    "srm_test_periods",
    "suggestions",
    "wilson_interval",
]

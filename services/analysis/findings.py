"""What SIRA's rules find in one experiment's statistics: fail-fast losers and guardrail breaches.

Read by both the beat job (:mod:`services.analysis.jobs`, which acts on findings) and the
insights read path (:mod:`services.analysis.insights`, which only shows them), so neither
imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.enums import LOWER_IS_BETTER
from sira.failfast import ArmFlag, FailFastConfig, evaluate, guardrail_ratio_flags

from .inputs import ExperimentInput

CONVERSION = "conversion"
#: Guardrails judged per converter (refunds per buyer) rather than per assigned user.
PER_CONVERTER = frozenset({"refund", "fraud_alert"})

FAIL_FAST = "fail_fast"
GUARDRAIL_BREACH = "guardrail_breach"


@dataclass(frozen=True)
class Finding:
    kind: str
    variant_index: int
    rule: str
    event_type: str
    action: str
    message: str
    details: dict[str, Any]


def _flag_details(flag: ArmFlag, experiment: ExperimentInput, event_type: str) -> dict[str, Any]:
    """The flag and the counts it was decided on (matured users, pooled over periods)."""
    return {
        "against_variant_id": str(experiment.arms[flag.against].variant_id) if flag.against is not None else None,
        "lower": flag.lower,
        "upper": flag.upper,
        "probability": flag.probability,
        "rule_message": flag.message,
        "periods": experiment.periods,
        "arms": [
            {"variant_id": str(arm.variant_id), "users": p.users, "successes": p.successes}
            for arm, p in zip(experiment.arms, experiment.table(event_type, matured=True).pooled())
        ],
    }


def fail_fast_findings(experiment: ExperimentInput) -> list[Finding]:
    """Arms the fail-fast rule finds losing, on the period-stratified matured counts."""
    config = experiment.fail_fast_config
    findings = []
    for flag in evaluate(experiment.decision_table(), config):
        loser = experiment.arms[flag.arm]
        winner = experiment.arms[flag.against] if flag.against is not None else None
        raw = experiment.table(experiment.primary_metric, matured=True).effective()
        if config.rule == "bayesian":
            evidence = f"P(worse than the best) = {flag.probability:.1%} > {config.threshold:.0%}"
        else:
            evidence = f"always-valid {1 - config.alpha:.0%} bounds on the gap [{flag.lower:.2%}, {flag.upper:.2%}]"
        message = (
            f"Variant '{loser.name}' is losing on {experiment.primary_metric} "
            f"({raw[flag.arm].rate:.2%} vs {raw[flag.against].rate:.2%} for '{winner.name}'; {evidence})"
            if winner is not None and flag.against is not None
            else f"Variant '{loser.name}' is losing on {experiment.primary_metric} ({evidence})"
        )
        findings.append(
            Finding(FAIL_FAST, flag.arm, config.rule, experiment.primary_metric, experiment.fail_fast_action,
                    message, _flag_details(flag, experiment, experiment.primary_metric))
        )
    return findings


def guardrail_findings(experiment: ExperimentInput) -> list[Finding]:
    """Variants whose guardrail outcome is credibly worse than control's by more than the margin.

    Refunds and fraud alerts are judged per converter (users with the event per user
    who converted, :data:`PER_CONVERTER`), so a variant that sells more with the same
    refund habits is never flagged; other guardrail types per assigned user.  The rule
    is :func:`sira.failfast.guardrail_ratio_flags` on the period-stratified counts of
    matured users, with the experiment's ``guardrail_margin``.  For an event type where
    more is better (a click used as a guardrail) the users without the event are the
    bad outcome, so the counts are flipped first.
    """
    if len(experiment.arms) < 2:
        return []
    config = FailFastConfig(min_samples=experiment.fail_fast_config.min_samples)
    margin = experiment.guardrail_margin
    control_index = experiment.control_index
    others = [i for i in range(len(experiment.arms)) if i != control_index]
    findings: dict[int, Finding] = {}
    for event_type in experiment.guardrail_event_types:
        table = experiment.table(event_type, matured=True)
        bad = table if event_type in LOWER_IS_BETTER else table.flipped()
        per = experiment.table(CONVERSION, matured=True) if event_type in PER_CONVERTER else None
        for flag in guardrail_ratio_flags(bad, control_index, config, margin, per):
            index = others[flag.arm]
            if index in findings:
                continue  # one breach per variant: the first guardrail it breaches
            arm = experiment.arms[index]
            scale = "per converter" if per is not None else "per user"
            message = (
                f"Variant '{arm.name}' breaches the {event_type} guardrail: its {event_type} rate {scale} is "
                f"credibly more than {1 + margin:.2f}x control's (always-valid {1 - config.alpha:.0%} bounds on "
                f"the ratio [{flag.lower:.2f}, {flag.upper:.2f}])"
            )
            details = _flag_details(flag, experiment, event_type)
            details["against_variant_id"] = str(experiment.arms[control_index].variant_id)
            details["margin"] = margin
            details["per"] = CONVERSION if per is not None else "user"
            findings[index] = Finding(GUARDRAIL_BREACH, index, "sequential", event_type, experiment.guardrail_action,
                                      message, details)
    return [findings[i] for i in sorted(findings)]

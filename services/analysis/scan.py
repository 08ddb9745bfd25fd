"""SIRA's fail-fast and guardrail scan (``sira.fail_fast_scan``).

For each running experiment: the findings of :mod:`services.analysis.findings`, each
stored once as a recommendation (``ON CONFLICT DO NOTHING``: only its inserter acts),
and the configured action applied (pause the losing arm, or stop the experiment) with
its audit entry, committed per experiment. A job lock (:func:`.jobs.job_lock`) keeps
two scans from running at once; correctness does not depend on it.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.orm import Session

from core import db, metrics
from core.errors import Conflict
from models import Recommendation
from models.enums import ExperimentStatus

from .. import cache
from ..experiments import audit
from ..experiments import lifecycle as experiment_service
from ..experiments.audit import SIRA_ACTOR
from .findings import Finding, fail_fast_findings, guardrail_findings
from .inputs import ExperimentInput, chunks, load_inputs, running_experiment_ids
from .jobs import CHUNK_SIZE

log = logging.getLogger(__name__)
notifications = logging.getLogger("sira.notifications")


@dataclass
class ScanSummary:
    experiments: int = 0
    recommendations: int = 0
    actions_applied: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_EXISTING = text(
    "SELECT experiment_id, variant_id, kind FROM sira_recommendations WHERE experiment_id = ANY(:experiment_ids)"
).bindparams(bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))))


def _apply_action(session: Session, experiment: ExperimentInput, finding: Finding) -> tuple[bool, str]:
    """Carry out the configured action; returns (changed the experiment, outcome)."""
    variant = experiment.arms[finding.variant_index]
    try:
        if finding.action == "pause_variant":
            current = experiment_service.get_experiment(session, experiment.id)
            if next((v.paused for v in current.variants if v.id == variant.variant_id), False):
                return False, "variant already paused"
            experiment_service.set_variant_paused(
                session, experiment.id, variant.variant_id, paused=True, actor=SIRA_ACTOR, reason=finding.message
            )
            return True, "variant paused"
        if finding.action == "stop_experiment":
            experiment_service.transition(session, experiment.id, "stop", SIRA_ACTOR)
            return True, "experiment stopped"
    except Conflict as exc:
        return False, f"not applied: {exc.message}"
    return False, "recommendation only"


def _record_findings(session: Session, client: redis.Redis | None, experiment: ExperimentInput, findings: list[Finding]) -> tuple[int, int]:
    """Record new findings once, audit them, apply their actions; commit. Returns (new, applied).

    Lock order, as for every mutation: the experiment row first (``FOR UPDATE``), the audit
    chain last (taken at COMMIT by :mod:`services.experiments.audit`). Taking the chain lock
    before the row, while an API mutation holds the row and waits for the chain, deadlocks.
    """
    recorded = applied = 0
    changed = False
    kinds: list[str] = []
    outcomes: list[str] = []
    experiment_service.get_experiment(session, experiment.id, for_update=True)
    for finding in findings:
        variant = experiment.arms[finding.variant_index]
        inserted = session.execute(
            insert(Recommendation)
            .values(
                experiment_id=experiment.id, variant_id=variant.variant_id, kind=finding.kind, rule=finding.rule,
                event_type=finding.event_type, action=finding.action, message=finding.message, details=finding.details,
            )
            .on_conflict_do_nothing(constraint="uq_sira_recommendations_once")
            .returning(Recommendation.id)
        ).scalar_one_or_none()
        if inserted is None:
            continue  # another scan recorded it first
        recorded += 1
        kinds.append(finding.kind)
        audit.record(
            session,
            actor=SIRA_ACTOR,
            action=f"sira_{finding.kind}",
            experiment_id=experiment.id,
            after={
                "recommendation_id": str(inserted), "variant_id": str(variant.variant_id), "variant": variant.name,
                "kind": finding.kind, "rule": finding.rule, "event_type": finding.event_type,
                "action": finding.action, "message": finding.message,
            },
        )
        did_change, outcome = _apply_action(session, experiment, finding)
        if did_change:
            outcomes.append(outcome)
        changed |= did_change
        applied += did_change
        session.execute(
            text("UPDATE sira_recommendations SET details = details || :outcome WHERE id = :id").bindparams(
                bindparam("outcome", type_=Recommendation.details.type)
            ),
            {"outcome": {"action_outcome": outcome}, "id": inserted},
        )
        notifications.warning(
            "SIRA %s: experiment '%s' (%s), variant '%s' (%s): %s [action %s: %s]",
            finding.kind, experiment.name, experiment.id, variant.name, variant.variant_id,
            finding.message, finding.action, outcome,
        )
    if changed:
        # Never leave a cached definition that still routes users to a paused arm or a
        # stopped experiment (rolled back and retried at the next scan otherwise).
        cache.commit_invalidating(session, client, experiment.id)
    else:
        session.commit()
    for kind in kinds:
        metrics.SIRA_RECOMMENDATIONS.labels(kind=kind).inc()
    metrics.SIRA_VARIANTS_AUTO_PAUSED.inc(outcomes.count("variant paused"))
    metrics.SIRA_EXPERIMENTS_AUTO_STOPPED.inc(outcomes.count("experiment stopped"))
    return recorded, applied


def fail_fast_scan(
    client: redis.Redis | None, *, experiment_ids: list[uuid.UUID] | None = None
) -> ScanSummary:
    """Evaluate fail-fast and guardrails on every running experiment; act on new findings."""
    summary = ScanSummary()
    with db.session_scope() as session:
        ids = experiment_ids if experiment_ids is not None else running_experiment_ids(session)
    for chunk in chunks(ids, CHUNK_SIZE):
        with db.session_scope() as session:
            experiments = [e for e in load_inputs(session, chunk, with_config=False) if e.status == ExperimentStatus.RUNNING.value]
            existing = {
                (row.experiment_id, row.variant_id, row.kind)
                for row in session.execute(_EXISTING, {"experiment_ids": [e.id for e in experiments]})
            }
        summary.experiments += len(experiments)
        for experiment in experiments:
            findings = [
                f for f in fail_fast_findings(experiment) + guardrail_findings(experiment)
                if (experiment.id, experiment.arms[f.variant_index].variant_id, f.kind) not in existing
            ]
            if not findings:
                continue
            session = db.new_session()
            try:
                recorded, applied = _record_findings(session, client, experiment, findings)
                summary.recommendations += recorded
                summary.actions_applied += applied
            except Exception as exc:  # one experiment must not stop the scan
                session.rollback()
                log.exception("fail-fast scan failed for experiment %s", experiment.id)
                summary.errors.append(f"{experiment.id}: {exc}")
            finally:
                session.close()
    return summary

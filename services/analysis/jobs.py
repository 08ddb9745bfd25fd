"""SIRA's scheduled work: posteriors and bandit weights, fail-fast and guardrail scans.

Each job walks the running experiments in chunks, computes with :mod:`sira`, and
commits per chunk (recompute) or per experiment (scan), so one bad experiment does
not hold up the rest.  Jobs are idempotent: running one twice, or two copies at
once, leaves the same state.  Concurrency is excluded by a session-level PostgreSQL
advisory lock per job (:func:`job_lock`), which the server releases by itself if the
process holding it dies; correctness does not depend on the lock either (state is
upserted, a recommendation is inserted ``ON CONFLICT DO NOTHING`` and only its
inserter acts on it).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
from sqlalchemy import BigInteger, Boolean, Double, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.orm import Session

from core import db, metrics
from core.errors import Conflict
from models import Recommendation
from models.enums import ExperimentMode, ExperimentStatus
from sira.bandit import bandit_weights, live_effective, posteriors, weights_moved

from .. import cache
from ..experiments import audit
from ..experiments import lifecycle as experiment_service
from ..experiments.audit import SIRA_ACTOR
from .findings import Finding, fail_fast_findings, guardrail_findings
from .inputs import ExperimentInput, chunks, load_inputs, running_experiment_ids
from .results import (
    D7_REFRESH_AFTER,
    compute_d7,
    read_d7,
    store_d7,
)

log = logging.getLogger(__name__)
notifications = logging.getLogger("sira.notifications")

CHUNK_SIZE = 250
# D7 retention needs a join over each experiment's users: refresh a bounded number
# of experiments per cycle (hourly each), so one cycle never pays for all of them.
D7_REFRESHES_PER_CYCLE = 50
WEIGHT_EPSILON = 1e-9

LOCK_KEYS = {
    "sira.recompute_posteriors": 147_005_001,
    "sira.fail_fast_scan": 147_005_002,
    "sira.daily_report": 147_005_003,
    "experiments.run_schedules": 147_005_014,
    "audit.write_checkpoint": 147_005_015,
}


@contextmanager
def job_lock(job: str) -> Iterator[bool]:
    """Yield True if this process holds ``job``'s lock for the block, False if another does.

    A session-level advisory lock on a connection kept for the whole job: released at
    the end, or by PostgreSQL when the connection drops (a crashed worker cannot leave
    the job locked forever, which a Redis key with a guessed expiry could).
    """
    key = LOCK_KEYS[job]
    with db.get_engine().connect() as connection:
        acquired = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        connection.commit()
        try:
            yield acquired
        finally:
            if acquired:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()


# --- sira.recompute_posteriors ---------------------------------------------------

@dataclass
class RecomputeSummary:
    experiments: int = 0
    arms: int = 0
    history_rows: int = 0
    published: int = 0
    d7_refreshed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArmState:
    experiment_id: uuid.UUID
    variant_id: uuid.UUID
    users: int
    successes: int
    alpha: float
    beta: float
    prob_best: float
    weight: float
    burn_in: bool
    period: int = 0


@dataclass(frozen=True)
class PublishedState:
    """What ``experiment_bandit_state`` held before this run, per variant."""

    users: int
    successes: int
    weight: float
    period: int


def arm_states(experiment: ExperimentInput, previous: dict[uuid.UUID, PublishedState] | None = None) -> list[ArmState]:
    """Posterior, P(best) and traffic weight of every arm.

    A bandit's weights are P(best) among unpaused arms with the burn-in and floor of
    :func:`sira.bandit.bandit_weights`, computed from the period-stratified counts of
    the users whose attribution window has closed.  They replace the weights in force
    only when some arm's weight moved by more than :data:`sira.bandit.REPUBLISH_STEP`
    (or the arms changed); each replacement gets the next weights period, which the
    assignment path records on every row (0 = the configured shares, in burn-in).  A
    fixed split keeps its configured shares (over unpaused arms): the state is still
    stored so the dashboard can chart the posteriors, but nothing is published.
    """
    if not experiment.arms:
        return []
    table = experiment.decision_table()
    result = bandit_weights(table, experiment.traffic_shares, experiment.paused, experiment.bandit_config)
    effective = live_effective(table, experiment.paused)
    alphas, betas = posteriors(effective)
    pooled = table.pooled()
    period = 0
    if experiment.mode == ExperimentMode.BANDIT.value:
        weights, burn_in = [float(w) for w in result.weights], result.burn_in
        before = [previous.get(arm.variant_id) for arm in experiment.arms] if previous else []
        if not burn_in:
            present = [b for b in before if b is not None]
            known = bool(before) and len(present) == len(before)
            last_period = max((b.period for b in present), default=0)
            if known and last_period > 0 and not weights_moved([b.weight for b in present], weights):
                weights, period = [b.weight for b in present], last_period
            else:
                period = last_period + 1
    else:
        weights, burn_in = experiment.active_shares(), False
    return [
        ArmState(
            experiment_id=experiment.id,
            variant_id=arm.variant_id,
            users=raw.users,
            successes=raw.successes,
            alpha=float(alphas[i]),
            beta=float(betas[i]),
            prob_best=float(result.prob_best[i]),
            weight=weights[i],
            burn_in=burn_in,
            period=period,
        )
        for i, (arm, raw) in enumerate(zip(experiment.arms, pooled))
    ]


_PREVIOUS_STATE = text(
    """
    SELECT experiment_id, variant_id, users, successes, weight, period
    FROM experiment_bandit_state
    WHERE experiment_id = ANY(:experiment_ids)
    """
).bindparams(bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))))


def _changed(previous: dict[uuid.UUID, PublishedState], states: list[ArmState]) -> bool:
    for state in states:
        before = previous.get(state.variant_id)
        if before is None:
            return True
        if (
            before.users != state.users
            or before.successes != state.successes
            or abs(before.weight - state.weight) > WEIGHT_EPSILON
        ):
            return True
    return False


def _store_states(session: Session, experiments: list[ExperimentInput], now: datetime) -> tuple[list[list[ArmState]], int]:
    """Upsert the current state; append history for experiments whose counts or weights moved.

    History only grows when something changed, so running the job twice over the same
    data (or every 30 s over an idle experiment) adds nothing.
    """
    ids = [e.id for e in experiments]
    previous: dict[uuid.UUID, PublishedState] = {
        row.variant_id: PublishedState(int(row.users), int(row.successes), float(row.weight), int(row.period))
        for row in session.execute(_PREVIOUS_STATE, {"experiment_ids": ids})
    }
    all_states = [arm_states(e, previous) for e in experiments]
    flat = [s for states in all_states for s in states]
    if flat:
        session.execute(_UPSERT_STATE, {**_columns(flat), "computed_at": now})
    changed = [s for states in all_states if states and _changed(previous, states) for s in states]
    if changed:
        session.execute(_APPEND_HISTORY, {**_columns(changed), "computed_at": now})
    return all_states, len(changed)


def _columns(states: list[ArmState]) -> dict[str, list[Any]]:
    return {
        "experiment_ids": [s.experiment_id for s in states],
        "variant_ids": [s.variant_id for s in states],
        "users": [s.users for s in states],
        "successes": [s.successes for s in states],
        "alphas": [s.alpha for s in states],
        "betas": [s.beta for s in states],
        "prob_bests": [s.prob_best for s in states],
        "weights": [s.weight for s in states],
        "burn_ins": [s.burn_in for s in states],
        "periods": [s.period for s in states],
    }


_ARRAYS = (
    bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("variant_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("users", type_=ARRAY(BigInteger)),
    bindparam("successes", type_=ARRAY(BigInteger)),
    bindparam("alphas", type_=ARRAY(Double)),
    bindparam("betas", type_=ARRAY(Double)),
    bindparam("prob_bests", type_=ARRAY(Double)),
    bindparam("weights", type_=ARRAY(Double)),
    bindparam("burn_ins", type_=ARRAY(Boolean)),
    bindparam("periods", type_=ARRAY(BigInteger)),
)
_UNNEST = (
    "unnest(:experiment_ids, :variant_ids, :users, :successes, :alphas, :betas, :prob_bests, :weights, :burn_ins, :periods)"
)

# One statement per chunk (arrays unnested server-side) rather than one row each.
_UPSERT_STATE = text(
    f"""
    INSERT INTO experiment_bandit_state
        (experiment_id, variant_id, users, successes, alpha, beta, prob_best, weight, burn_in, period, computed_at)
    SELECT e, v, u, s, a, b, p, w, bi, pe, :computed_at FROM {_UNNEST} AS t(e, v, u, s, a, b, p, w, bi, pe)
    ON CONFLICT (experiment_id, variant_id) DO UPDATE SET
        users = excluded.users, successes = excluded.successes, alpha = excluded.alpha, beta = excluded.beta,
        prob_best = excluded.prob_best, weight = excluded.weight, burn_in = excluded.burn_in,
        period = excluded.period, computed_at = excluded.computed_at
    """
).bindparams(*_ARRAYS)

_APPEND_HISTORY = text(
    f"""
    INSERT INTO experiment_bandit_history
        (experiment_id, variant_id, users, successes, alpha, beta, prob_best, weight, computed_at)
    SELECT e, v, u, s, a, b, p, w, :computed_at FROM {_UNNEST} AS t(e, v, u, s, a, b, p, w, bi, pe)
    """
).bindparams(*_ARRAYS)


def weights_ttl_seconds(recompute_interval_s: float) -> int:
    """Published weights expire if SIRA stops refreshing them; the assignment path then
    falls back to the configured shares rather than following a frozen posterior."""
    return max(300, int(recompute_interval_s * 20))


def publish_weights(
    client: redis.Redis, experiments: list[ExperimentInput], all_states: list[list[ArmState]], now: datetime, ttl_s: int
) -> int:
    pipe = client.pipeline(transaction=False)
    published = 0
    for experiment, states in zip(experiments, all_states):
        if experiment.mode != ExperimentMode.BANDIT.value or not states:
            continue
        document = {
            "weights": {str(s.variant_id): s.weight for s in states},
            "burn_in": states[0].burn_in,
            "period": states[0].period,
            "computed_at": now.isoformat(),
        }
        pipe.set(cache.weights_key(experiment.id), json.dumps(document), ex=ttl_s)
        published += 1
    if published:
        # SDK clients see published weights in their definitions.
        pipe.set(cache.SDK_DEFINITIONS_VERSION_KEY, cache.new_definitions_version())
        pipe.execute()
    return published


def refresh_d7(session: Session, client: redis.Redis, experiment_ids: list[uuid.UUID], now: datetime, limit: int) -> int:
    """Recompute cached D7 retention for the experiments whose copy is missing or stale."""
    cached = read_d7(client, experiment_ids)
    due = []
    for experiment_id in experiment_ids:
        try:
            fresh = datetime.fromisoformat((cached.get(experiment_id) or {})["computed_at"]) > now - D7_REFRESH_AFTER
        except (TypeError, KeyError, ValueError):
            fresh = False  # missing or unreadable: recompute
        if not fresh:
            due.append(experiment_id)
    due = due[:limit]
    if not due:
        return 0
    counts = {}
    for chunk in chunks(due, CHUNK_SIZE):
        counts.update(compute_d7(session, load_inputs(session, chunk, with_config=False), now))
    session.rollback()
    store_d7(client, counts, now)
    return len(due)


def recompute_posteriors(
    client: redis.Redis | None,
    *,
    recompute_interval_s: float = 30.0,
    now: datetime | None = None,
    experiment_ids: list[uuid.UUID] | None = None,
) -> RecomputeSummary:
    """Posteriors, P(best) and weights for every running experiment; state, history, Redis."""
    now = now or datetime.now(timezone.utc)
    summary = RecomputeSummary()
    with db.session_scope() as session:
        ids = experiment_ids if experiment_ids is not None else running_experiment_ids(session)
    ttl_s = weights_ttl_seconds(recompute_interval_s)
    for chunk in chunks(ids, CHUNK_SIZE):
        with db.session_scope() as session:
            experiments = [
                e for e in load_inputs(session, chunk, with_config=False, now=now) if e.status == ExperimentStatus.RUNNING.value
            ]
            all_states, history_rows = _store_states(session, experiments, now)
        summary.experiments += len(experiments)
        summary.arms += sum(len(states) for states in all_states)
        summary.history_rows += history_rows
        if client is not None:
            try:
                summary.published += publish_weights(client, experiments, all_states, now, ttl_s)
            except redis.RedisError as exc:
                log.warning("could not publish bandit weights: %s", exc)
                summary.errors.append(f"redis: {exc}")
    if client is not None and ids and not summary.errors:
        try:
            with db.session_scope() as session:
                summary.d7_refreshed = refresh_d7(session, client, list(ids), now, D7_REFRESHES_PER_CYCLE)
        except redis.RedisError as exc:
            log.warning("could not refresh D7 retention: %s", exc)
            summary.errors.append(f"redis: {exc}")
    return summary


# --- sira.fail_fast_scan ---------------------------------------------------------

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

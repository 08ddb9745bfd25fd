"""Scheduled starts and stops, run by the ``experiments.run_schedules`` beat task.

A draft whose ``start_at`` has passed is started, a running experiment whose
``end_at`` has passed is stopped, both through :func:`lifecycle.transition` as the
actor ``sira-scheduler`` — so a start still needs its approval and room in its
layer. Every attempt is a row in ``experiment_schedule_attempts``; one that fails
(approval missing, layer full, Redis down) is retried on a later tick once
``retry_interval_s`` has passed since the last failure, until it succeeds or someone
changes the schedule or the experiment.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from core import db
from core.errors import DomainError, NotFound
from models import Experiment, ScheduleAttempt
from models.enums import ExperimentStatus as S

from .. import cache
from . import lifecycle
from .audit import Actor

log = logging.getLogger(__name__)

SCHEDULER_ACTOR = Actor(sub="sira-scheduler", roles=("sira-scheduler",))
DONE, SKIPPED = "done", "skipped"


@dataclass
class ScheduleSummary:
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting_to_retry: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def due(session: Session, now: datetime) -> list[tuple[uuid.UUID, str, datetime]]:
    """(experiment id, action, scheduled time) of every start or stop whose time has come."""
    rows = session.execute(
        select(Experiment.id, Experiment.status, Experiment.start_at, Experiment.end_at).where(
            or_(
                and_(Experiment.status == S.DRAFT.value, Experiment.start_at <= now),
                and_(Experiment.status == S.RUNNING.value, Experiment.end_at <= now),
            )
        )
    ).all()
    return [
        (row.id, "start", row.start_at) if row.status == S.DRAFT.value else (row.id, "stop", row.end_at) for row in rows
    ]


def _recently_failed(session: Session, experiment_id: uuid.UUID, action: str, scheduled_for: datetime, since: datetime) -> bool:
    last = session.execute(
        select(ScheduleAttempt.succeeded, ScheduleAttempt.attempted_at)
        .where(
            ScheduleAttempt.experiment_id == experiment_id,
            ScheduleAttempt.action == action,
            ScheduleAttempt.scheduled_for == scheduled_for,
        )
        .order_by(ScheduleAttempt.id.desc())
        .limit(1)
    ).first()
    return last is not None and not last.succeeded and last.attempted_at > since


def _attempt(
    client: redis.Redis, experiment_id: uuid.UUID, action: str, scheduled_for: datetime, *, approvals_required: bool
) -> str:
    """Run one scheduled transition in its own transaction: DONE, SKIPPED or the error message."""
    session = db.new_session()
    try:
        try:
            experiment = lifecycle.get_experiment(session, experiment_id, for_update=True)
        except NotFound:  # deleted since it was found due
            return SKIPPED
        # Re-check under the lock: someone may have started, stopped or rescheduled it.
        current = experiment.start_at if action == "start" else experiment.end_at
        expected_status = S.DRAFT.value if action == "start" else S.RUNNING.value
        if experiment.status != expected_status or current != scheduled_for:
            return SKIPPED
        lifecycle.transition(session, experiment_id, action, SCHEDULER_ACTOR, approvals_required=approvals_required)
        session.add(ScheduleAttempt(experiment_id=experiment_id, action=action, scheduled_for=scheduled_for, succeeded=True))
        session.flush()
        if not cache.invalidate_definition(client, experiment_id):
            raise DomainError("Redis is unreachable: the assignment cache cannot be invalidated")
        session.commit()
        cache.invalidate_definition(client, experiment_id)
        return DONE
    except DomainError as exc:
        session.rollback()
        return exc.message
    finally:
        session.close()


def _record_failure(experiment_id: uuid.UUID, action: str, scheduled_for: datetime, error: str) -> None:
    session = db.new_session()
    try:
        session.add(
            ScheduleAttempt(experiment_id=experiment_id, action=action, scheduled_for=scheduled_for, succeeded=False, error=error)
        )
        session.commit()
    finally:
        session.close()


def run_due(
    client: redis.Redis, *, approvals_required: bool, retry_interval_s: float, now: datetime | None = None
) -> ScheduleSummary:
    now = now or datetime.now(timezone.utc)
    summary = ScheduleSummary()
    session = db.new_session()
    try:
        work = due(session, now)
        retry_since = now - timedelta(seconds=retry_interval_s)
        pending = []
        for experiment_id, action, scheduled_for in work:
            if _recently_failed(session, experiment_id, action, scheduled_for, retry_since):
                summary.waiting_to_retry += 1
            else:
                pending.append((experiment_id, action, scheduled_for))
    finally:
        session.rollback()
        session.close()
    for experiment_id, action, scheduled_for in pending:
        error = _attempt(client, experiment_id, action, scheduled_for, approvals_required=approvals_required)
        if error == DONE:
            (summary.started if action == "start" else summary.stopped).append(str(experiment_id))
        elif error != SKIPPED:
            log.warning("scheduled %s of %s failed: %s", action, experiment_id, error)
            _record_failure(experiment_id, action, scheduled_for, error)
            summary.failed.append(str(experiment_id))
    return summary


def attempts(session: Session, *, experiment_id: uuid.UUID | None = None, failed_only: bool = False, limit: int = 100) -> list[ScheduleAttempt]:
    query = select(ScheduleAttempt).order_by(ScheduleAttempt.id.desc()).limit(limit)
    if experiment_id is not None:
        query = query.where(ScheduleAttempt.experiment_id == experiment_id)
    if failed_only:
        query = query.where(ScheduleAttempt.succeeded.is_(False))
    return list(session.execute(query).scalars())


def upcoming(session: Session, limit: int = 200) -> list[Experiment]:
    """Drafts with a start time and running experiments with a stop time, soonest first."""
    query = (
        select(Experiment)
        .where(
            or_(
                and_(Experiment.status == S.DRAFT.value, Experiment.start_at.is_not(None)),
                and_(Experiment.status == S.RUNNING.value, Experiment.end_at.is_not(None)),
            )
        )
        .limit(limit)
    )
    experiments = list(session.execute(query).scalars())
    def due_at(e: Experiment) -> datetime:
        due = e.start_at if e.status == S.DRAFT.value else e.end_at
        assert due is not None  # selected for having it
        return due

    return sorted(experiments, key=due_at)

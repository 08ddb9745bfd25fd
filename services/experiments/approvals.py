"""Four-eyes approval: an experiment that needs it starts only after someone else said yes.

States of a request: ``pending`` -> ``approved`` | ``rejected``; ``pending`` or
``approved`` -> ``invalidated`` when the draft changes (the approval was for what the
approver saw, not for what it became). At most one request is open (pending or
approved) per experiment (a partial unique index), and the approver is never the
requester (a CHECK constraint, besides the 403 here). Every step is an audit entry
in the same transaction.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import rbac
from core.errors import Conflict, Forbidden, NotFound
from models import ApprovalRequest, Experiment
from models.enums import APPROVAL_CATEGORIES, ExperimentStatus

from . import audit
from .audit import Actor

PENDING, APPROVED, REJECTED, INVALIDATED = "pending", "approved", "rejected", "invalidated"
OPEN = (PENDING, APPROVED)


def needs_approval(experiment: Experiment, *, approvals_required: bool) -> bool:
    return approvals_required or experiment.requires_approval or experiment.category in APPROVAL_CATEGORIES


def request_snapshot(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": str(request.id),
        "status": request.status,
        "requested_by": request.requested_by,
        "comment": request.comment,
        "experiment_version": request.experiment_version,
        "decided_by": request.decided_by,
        "decision_comment": request.decision_comment,
    }


def open_request(session: Session, experiment_id: uuid.UUID, *, for_update: bool = False) -> ApprovalRequest | None:
    query = select(ApprovalRequest).where(
        ApprovalRequest.experiment_id == experiment_id, ApprovalRequest.status.in_(OPEN)
    )
    if for_update:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def is_approved(session: Session, experiment_id: uuid.UUID) -> bool:
    request = open_request(session, experiment_id)
    return request is not None and request.status == APPROVED


def approval_state(session: Session, experiment: Experiment, *, approvals_required: bool) -> dict[str, Any]:
    """``{required, status, request_id}`` for the experiment's response."""
    latest = session.execute(
        select(ApprovalRequest)
        .where(ApprovalRequest.experiment_id == experiment.id)
        .order_by(ApprovalRequest.requested_at.desc(), ApprovalRequest.id)
        .limit(1)
    ).scalar_one_or_none()
    return {
        "required": needs_approval(experiment, approvals_required=approvals_required),
        "status": latest.status if latest is not None else None,
        "request_id": latest.id if latest is not None else None,
    }


def list_requests(
    session: Session, *, experiment_id: uuid.UUID | None = None, status: str | None = None
) -> list[ApprovalRequest]:
    query = select(ApprovalRequest).order_by(ApprovalRequest.requested_at.desc(), ApprovalRequest.id)
    if experiment_id is not None:
        query = query.where(ApprovalRequest.experiment_id == experiment_id)
    if status is not None:
        query = query.where(ApprovalRequest.status == status)
    return list(session.execute(query.limit(500)).scalars())


def create_request(session: Session, experiment: Experiment, comment: str, actor: Actor) -> ApprovalRequest:
    """Ask for approval of the experiment as it is now (the caller holds its row lock)."""
    if experiment.status not in (ExperimentStatus.DRAFT.value, ExperimentStatus.STOPPED.value):
        raise Conflict(f"experiment is {experiment.status}; approval is asked for before it starts")
    existing = open_request(session, experiment.id, for_update=True)
    if existing is not None:
        raise Conflict(
            f"an approval request is already {existing.status} ({existing.id}); "
            "change the draft to invalidate it, or wait for a decision"
        )
    request = ApprovalRequest(
        id=uuid.uuid4(),
        experiment_id=experiment.id,
        status=PENDING,
        requested_by=actor.sub,
        comment=comment,
        experiment_version=experiment.version,
        requested_at=datetime.now(timezone.utc),
    )
    session.add(request)
    session.flush()
    audit.record(
        session, actor=actor, action="request_approval", experiment_id=experiment.id, after=request_snapshot(request)
    )
    return request


def decide(session: Session, experiment: Experiment, *, approve: bool, comment: str, actor: Actor) -> ApprovalRequest:
    if rbac.OPS_ADMIN not in actor.roles:
        raise Forbidden("only an ops_admin can approve or reject")
    request = open_request(session, experiment.id, for_update=True)
    if request is None or request.status != PENDING:
        raise Conflict(
            "no pending approval request for this experiment"
            + (f" (the open one is {request.status})" if request is not None else "")
        )
    if request.requested_by == actor.sub:
        raise Forbidden("four-eyes rule: the requester cannot approve or reject their own request")
    before = request_snapshot(request)
    request.status = APPROVED if approve else REJECTED
    request.decided_by = actor.sub
    request.decision_comment = comment
    request.decided_at = datetime.now(timezone.utc)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="approve" if approve else "reject",
        experiment_id=experiment.id,
        before=before,
        after=request_snapshot(request),
    )
    return request


def invalidate(session: Session, experiment: Experiment, actor: Actor) -> None:
    """A change to the draft voids any open request (pending or approved)."""
    request = open_request(session, experiment.id, for_update=True)
    if request is None:
        return
    before = request_snapshot(request)
    request.status = INVALIDATED
    request.invalidated_at = datetime.now(timezone.utc)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="invalidate_approval",
        experiment_id=experiment.id,
        before=before,
        after=request_snapshot(request),
    )


def check_can_start(session: Session, experiment: Experiment, *, approvals_required: bool) -> None:
    if needs_approval(experiment, approvals_required=approvals_required) and not is_approved(session, experiment.id):
        raise Conflict(
            "approval required: ask with POST /api/experiments/{id}/approval-requests and have another ops_admin approve",
            errors={"approval": {"required": True}},
        )


def get_experiment_request(session: Session, experiment_id: uuid.UUID, request_id: uuid.UUID) -> ApprovalRequest:
    request = session.get(ApprovalRequest, request_id)
    if request is None or request.experiment_id != experiment_id:
        raise NotFound(f"approval request {request_id} not found")
    return request

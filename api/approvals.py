"""Four-eyes approval of experiment starts: request, approve, reject, and the queue."""
from __future__ import annotations

import uuid

import marshmallow as ma
from marshmallow import fields, validate
from sqlalchemy import select

from models import ApprovalRequest, Experiment
from models.enums import APPROVAL_STATUSES
from services.experiments import approvals as service
from services.experiments import lifecycle

from . import context
from .auth import require
from .input_guard import Blueprint
from .schemas import QuerySchema, StrictSchema

blp = Blueprint("approvals", __name__, url_prefix="/api", description="Four-eyes approval")


class ApprovalRequestInSchema(StrictSchema):
    comment = fields.String(load_default="", validate=validate.Length(max=10_000))


class DecisionInSchema(StrictSchema):
    comment = fields.String(
        required=True,
        validate=validate.Length(min=1, max=10_000),
        metadata={"description": "Why: required for an approval and for a rejection."},
    )


class ApprovalQuerySchema(QuerySchema):
    status = fields.String(validate=validate.OneOf(APPROVAL_STATUSES))


class ApprovalOutSchema(ma.Schema):
    id = fields.UUID()
    experiment_id = fields.UUID()
    experiment_name = fields.String(allow_none=True)
    status = fields.String()
    requested_by = fields.String()
    comment = fields.String()
    requested_at = fields.DateTime()
    experiment_version = fields.Integer(metadata={"description": "The version the request was made for."})
    decided_by = fields.String(allow_none=True)
    decision_comment = fields.String(allow_none=True)
    decided_at = fields.DateTime(allow_none=True)
    invalidated_at = fields.DateTime(allow_none=True)


_REQUEST_FIELDS = tuple(name for name in ApprovalOutSchema._declared_fields if name != "experiment_name")


def _with_names(requests: list[ApprovalRequest]) -> list[dict]:
    ids = {r.experiment_id for r in requests}
    names = dict(context.session().execute(select(Experiment.id, Experiment.name).where(Experiment.id.in_(ids))).all()) if ids else {}
    return [{**{f: getattr(r, f) for f in _REQUEST_FIELDS}, "experiment_name": names.get(r.experiment_id)} for r in requests]


@blp.route("/approval-requests", methods=["GET"])
@require("list_approvals")
@blp.arguments(ApprovalQuerySchema, location="query")
@blp.response(200, ApprovalOutSchema(many=True))
def approval_queue(query: dict):
    """Approval requests, newest first (``status=pending`` is the queue an approver works through)."""
    return _with_names(service.list_requests(context.session(), status=query.get("status")))


@blp.route("/experiments/<uuid:experiment_id>/approval-requests", methods=["GET"])
@require("list_approvals")
@blp.response(200, ApprovalOutSchema(many=True))
def experiment_requests(experiment_id: uuid.UUID):
    """This experiment's approval history, newest first."""
    lifecycle.get_experiment(context.session(), experiment_id)
    return _with_names(service.list_requests(context.session(), experiment_id=experiment_id))


@blp.route("/experiments/<uuid:experiment_id>/approval-requests", methods=["POST"])
@require("request_approval")
@blp.arguments(ApprovalRequestInSchema)
@blp.response(201, ApprovalOutSchema)
@blp.alt_response(409, description="Not draft/stopped, or a request is already pending or approved")
def request_approval(data: dict, experiment_id: uuid.UUID):
    """Ask for approval to start the experiment as it is now (the caller is recorded as requester)."""
    session = context.session()
    experiment = lifecycle.get_experiment(session, experiment_id, for_update=True)
    request = service.create_request(session, experiment, data["comment"], context.actor())
    row = _with_names([request])[0]
    session.commit()
    return row


def _decision_view(approve: bool):
    action = "approve" if approve else "reject"

    @require(action)
    @blp.arguments(DecisionInSchema)
    @blp.response(200, ApprovalOutSchema)
    @blp.alt_response(403, description="Not an ops_admin, or the requester themselves")
    @blp.alt_response(409, description="No pending request")
    def view(data: dict, experiment_id: uuid.UUID):
        session = context.session()
        experiment = lifecycle.get_experiment(session, experiment_id, for_update=True)
        request = service.decide(session, experiment, approve=approve, comment=data["comment"], actor=context.actor())
        row = _with_names([request])[0]
        session.commit()
        return row

    view.__name__ = f"{action}_experiment"
    view.__doc__ = (
        "Approve the pending request (an ops_admin who is not the requester, with a comment); the experiment may then start."
        if approve
        else "Reject the pending request (an ops_admin who is not the requester, with a comment)."
    )
    blp.route(f"/experiments/<uuid:experiment_id>/{action}", methods=["POST"])(view)


_decision_view(True)
_decision_view(False)

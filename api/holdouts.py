"""Holdouts resource: long-term holdouts and their results against enrolled users."""
from __future__ import annotations

import uuid

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from services.experiments import holdouts as service

from . import context
from .auth import require
from .input_guard import Blueprint
from .results import IntervalSchema, UpliftSchema
from .schemas import StrictSchema, percent_field

blp = Blueprint("holdouts", __name__, url_prefix="/api/holdouts", description="Long-term holdouts")

MAX_HOLDOUT_PERCENT = 50


class HoldoutCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    percent = percent_field("Share of users held out (at most 50; cannot change later).", maximum=MAX_HOLDOUT_PERCENT, required=True)
    description = fields.String(load_default="", validate=validate.Length(max=10_000))


class HoldoutOutSchema(ma.Schema):
    id = fields.UUID()
    name = fields.String()
    description = fields.String()
    percent = fields.Float()
    created_by = fields.String()
    created_at = fields.DateTime()
    members = fields.Integer(metadata={"description": "Users recorded as members so far."})
    experiment_ids = fields.List(fields.String())


class GroupSchema(ma.Schema):
    users = fields.Integer()
    events = fields.Integer()
    rate = fields.Float()
    interval = fields.Nested(IntervalSchema, allow_none=True)
    credible_interval = fields.Nested(IntervalSchema, allow_none=True)
    value_sum = fields.Float()
    value_mean = fields.Float()
    value_interval = fields.Nested(IntervalSchema, allow_none=True)


class HoldoutMetricSchema(ma.Schema):
    lower_is_better = fields.Boolean()
    holdout = fields.Nested(GroupSchema)
    enrolled = fields.Nested(GroupSchema)
    uplift = fields.Nested(UpliftSchema, metadata={"description": "Enrolled rate relative to the holdout's."})
    value_uplift = fields.Nested(UpliftSchema)


class HoldoutResultsSchema(ma.Schema):
    holdout_id = fields.UUID()
    name = fields.String()
    percent = fields.Float()
    members = fields.Integer()
    enrolled_users = fields.Integer()
    experiment_ids = fields.List(fields.String())
    metrics = fields.Dict(keys=fields.String(), values=fields.Nested(HoldoutMetricSchema))


def _out(holdout) -> dict:
    return {
        "id": holdout.id,
        "name": holdout.name,
        "description": holdout.description,
        "percent": float(holdout.percent),
        "created_by": holdout.created_by,
        "created_at": holdout.created_at,
        **service.summary(context.session(), holdout),
    }


@blp.route("")
class HoldoutCollection(MethodView):
    @require("list_holdouts")
    @blp.response(200, HoldoutOutSchema(many=True))
    def get(self):
        """List holdouts."""
        return [_out(h) for h in service.list_holdouts(context.session())]

    @require("create_holdout")
    @blp.arguments(HoldoutCreateSchema)
    @blp.response(201, HoldoutOutSchema)
    @blp.alt_response(409, description="The name is taken")
    def post(self, data: dict):
        """Create a holdout; experiments opt in with ``holdout_ids``."""
        holdout = service.create_holdout(context.session(), data, context.actor())
        context.session().commit()
        return _out(holdout)


@blp.route("/<uuid:holdout_id>")
class HoldoutItem(MethodView):
    @require("list_holdouts")
    @blp.response(200, HoldoutOutSchema)
    def get(self, holdout_id: uuid.UUID):
        """One holdout."""
        return _out(service.get_holdout(context.session(), holdout_id))


@blp.route("/<uuid:holdout_id>/results", methods=["GET"])
@require("holdout_results")
@blp.response(200, HoldoutResultsSchema)
def holdout_results(holdout_id: uuid.UUID):
    """Holdout members vs users enrolled in its experiments, on every metric."""
    session = context.session()
    return service.holdout_results(session, service.get_holdout(session, holdout_id))

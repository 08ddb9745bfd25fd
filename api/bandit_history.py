"""Bandit history: SIRA's per-arm posteriors and weights over time (for charts)."""
from __future__ import annotations

import uuid
from datetime import timezone

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from services.analysis import over_time
from services.experiments import bandit_history as service

from . import context
from .auth import require
from .input_guard import Blueprint
from .schemas import QuerySchema

blp = Blueprint(
    "bandit_history", __name__, url_prefix="/api/experiments", description="SIRA bandit weights over time"
)


class BanditHistoryQuerySchema(QuerySchema):
    since = fields.AwareDateTime(default_timezone=timezone.utc, metadata={"description": "only snapshots at or after this time"})
    limit = fields.Integer(
        load_default=service.DEFAULT_SNAPSHOTS,
        validate=validate.Range(min=1, max=service.MAX_SNAPSHOTS),
        metadata={"description": "the latest N snapshots"},
    )


class BoundsSchema(ma.Schema):
    lower = fields.Float(allow_none=True)
    upper = fields.Float(allow_none=True)


class ComparisonSchema(ma.Schema):
    estimate = fields.Float(allow_none=True)
    lower = fields.Float(allow_none=True)
    upper = fields.Float(allow_none=True)
    always_valid_lower = fields.Float(allow_none=True)
    always_valid_upper = fields.Float(allow_none=True)
    message = fields.String()


class ArmSnapshotSchema(ma.Schema):
    variant_id = fields.UUID()
    users = fields.Integer()
    successes = fields.Integer(metadata={"description": "users with the good outcome (SIRA's success)"})
    event_users = fields.Integer(metadata={"description": "users with the primary metric's event"})
    alpha = fields.Float()
    beta = fields.Float()
    posterior_mean = fields.Float()
    credible_interval = fields.Nested(BoundsSchema)
    prob_best = fields.Float()
    weight = fields.Float()
    uplift = fields.Nested(ComparisonSchema, allow_none=True, metadata={"description": "relative, vs control (null for control)"})
    difference = fields.Nested(ComparisonSchema, allow_none=True, metadata={"description": "absolute, vs control, always-valid band"})


class SnapshotSchema(ma.Schema):
    computed_at = fields.DateTime()
    arms = fields.List(fields.Nested(ArmSnapshotSchema))


class HistoryVariantSchema(ma.Schema):
    variant_id = fields.UUID()
    name = fields.String()
    is_control = fields.Boolean()
    paused = fields.Boolean()


class BanditHistoryOutSchema(ma.Schema):
    experiment_id = fields.UUID()
    mode = fields.String()
    primary_metric = fields.String()
    lower_is_better = fields.Boolean()
    confidence = fields.Float()
    variants = fields.List(fields.Nested(HistoryVariantSchema))
    snapshots = fields.List(fields.Nested(SnapshotSchema))


@blp.route("/<uuid:experiment_id>/bandit/history")
class BanditHistory(MethodView):
    @require("results")
    @blp.arguments(BanditHistoryQuerySchema, location="query")
    @blp.response(200, BanditHistoryOutSchema)
    def get(self, query: dict, experiment_id: uuid.UUID):
        """The latest ``limit`` snapshots of α, β, P(best) and weight per arm, oldest first
        (one snapshot per SIRA recompute that changed something, fixed splits included),
        with each arm's cumulative uplift and difference versus control at that time."""
        return over_time.experiment_over_time(
            context.session(), experiment_id, since=query.get("since"), limit=query["limit"]
        )

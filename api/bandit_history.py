"""Bandit history: SIRA's per-arm posteriors and weights over time (for charts)."""
from __future__ import annotations

import uuid
from datetime import timezone

import marshmallow as ma
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields, validate

from services.experiments import bandit_history as service

from . import context
from .auth import require
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


class ArmSnapshotSchema(ma.Schema):
    variant_id = fields.UUID()
    users = fields.Integer()
    successes = fields.Integer()
    alpha = fields.Float()
    beta = fields.Float()
    prob_best = fields.Float()
    weight = fields.Float()


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
    variants = fields.List(fields.Nested(HistoryVariantSchema))
    snapshots = fields.List(fields.Nested(SnapshotSchema))


@blp.route("/<uuid:experiment_id>/bandit/history")
class BanditHistory(MethodView):
    @require("results")
    @blp.arguments(BanditHistoryQuerySchema, location="query")
    @blp.response(200, BanditHistoryOutSchema)
    def get(self, query: dict, experiment_id: uuid.UUID):
        """The latest ``limit`` snapshots of α, β, P(best) and weight per arm, oldest first
        (one snapshot per SIRA recompute that changed something)."""
        return service.bandit_history(
            context.session(), experiment_id, since=query.get("since"), limit=query["limit"]
        )

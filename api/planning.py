"""Power planning: users per arm, total and days for a fixed-horizon and a sequential test."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate, validates_schema

from core.errors import Invalid
from sira.planning import METRIC_KINDS, PlanInput, PlanningError, plan_sample_size

from .auth import require
from .input_guard import Blueprint
from .schemas import StrictSchema

blp = Blueprint("planning", __name__, url_prefix="/api/planning", description="Sample-size planning")


class SampleSizeInSchema(StrictSchema):
    metric_kind = fields.String(required=True, validate=validate.OneOf(METRIC_KINDS))
    baseline = fields.Float(
        required=True,
        allow_nan=False,
        validate=validate.Range(min=-1e12, max=1e12),
        metadata={"description": "Control's conversion rate in (0, 1), or its mean.", "minimum": -1e12, "maximum": 1e12},
    )
    sd = fields.Float(
        allow_none=True,
        allow_nan=False,
        validate=validate.Range(min=0, max=1e12, min_inclusive=False),
        metadata={"description": "Standard deviation per user (mean only).", "minimum": 0, "maximum": 1e12},
    )
    mde_relative = fields.Float(
        required=True,
        allow_nan=False,
        validate=validate.Range(min=-10, max=10),
        metadata={"description": "Minimum detectable effect relative to baseline (0.05 = +5 %).", "minimum": -10, "maximum": 10},
    )
    arms = fields.Integer(strict=True, load_default=2, validate=validate.Range(min=2, max=20), metadata={"minimum": 2, "maximum": 20})
    alpha = fields.Float(load_default=0.05, validate=validate.Range(min=1e-6, max=0.5), metadata={"minimum": 1e-6, "maximum": 0.5})
    power = fields.Float(load_default=0.8, validate=validate.Range(min=0.5, max=0.9999), metadata={"minimum": 0.5, "maximum": 0.9999})
    daily_users = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1, max=10**10),
        metadata={"description": "Users entering the experiment per day (all arms).", "minimum": 1, "maximum": 10**10},
    )
    sequential = fields.Boolean(
        load_default=False, metadata={"description": "Whether the top-level numbers are the sequential plan's."}
    )

    @validates_schema
    def check_sd(self, data: dict, **kwargs: object) -> None:
        if data.get("metric_kind") == "mean" and data.get("sd") is None:
            raise ma.ValidationError({"sd": ["required for metric_kind mean"]})


class PlanSchema(ma.Schema):
    users_per_arm = fields.Integer(allow_none=True)
    total_users = fields.Integer(allow_none=True)
    days = fields.Integer(allow_none=True, metadata={"description": "At daily_users (null without it)."})
    alpha_per_comparison = fields.Float()
    message = fields.String()


class SampleSizeOutSchema(ma.Schema):
    users_per_arm = fields.Integer(allow_none=True)
    total_users = fields.Integer(allow_none=True)
    days = fields.Integer(allow_none=True)
    sequential = fields.Boolean()
    fixed_horizon = fields.Nested(PlanSchema)
    sequential_plan = fields.Nested(PlanSchema, metadata={"description": "SIRA's always-valid rule."})


@blp.route("/sample-size", methods=["POST"])
@require("plan")
@blp.arguments(SampleSizeInSchema)
@blp.response(200, SampleSizeOutSchema)
def sample_size(data: dict):
    """Users per arm, total and days for a fixed-horizon test and for SIRA's always-valid rule."""
    plan_input = PlanInput(
        metric_kind=data["metric_kind"],
        baseline=data["baseline"],
        sd=data.get("sd"),
        mde_relative=data["mde_relative"],
        arms=data["arms"],
        alpha=data["alpha"],
        power=data["power"],
        daily_users=data.get("daily_users"),
    )
    try:
        plan = plan_sample_size(plan_input)
    except PlanningError as exc:
        raise Invalid(str(exc), errors={"json": {exc.field: [str(exc)]}}) from exc
    chosen = plan.sequential if data["sequential"] else plan.fixed_horizon
    return {
        "users_per_arm": chosen.users_per_arm,
        "total_users": chosen.total_users,
        "days": chosen.days,
        "sequential": data["sequential"],
        "fixed_horizon": plan.fixed_horizon,
        "sequential_plan": plan.sequential,
    }

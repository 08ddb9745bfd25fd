"""SIRA read side: results, insights and daily reports."""
from __future__ import annotations

import logging
import uuid

import marshmallow as ma
from flask import Response
from flask.views import MethodView
from marshmallow import fields, validate

from services.analysis import insights as sira_insights
from services.analysis import reports as sira_reports
from services.analysis import results as sira_results

from . import context
from .auth import require
from .input_guard import Blueprint
from .money_schemas import CovariateUsersSchema, CupedSchema, NetRevenueSchema, RatiosSchema, RevenueSchema
from .schemas import QuerySchema

log = logging.getLogger(__name__)

blp = Blueprint("results", __name__, url_prefix="/api/experiments", description="SIRA results and insights")
reports_blp = Blueprint("reports", __name__, url_prefix="/api/reports", description="SIRA daily reports")


# --- Schemas ---------------------------------------------------------------------

class IntervalSchema(ma.Schema):
    lower = fields.Float(allow_none=True)
    upper = fields.Float(allow_none=True)


class UpliftSchema(ma.Schema):
    estimate = fields.Float(allow_none=True)
    lower = fields.Float(allow_none=True)
    upper = fields.Float(allow_none=True)
    message = fields.String()


class RateComparisonSchema(ma.Schema):
    """Variant vs control: fixed-horizon 95% bounds and always-valid 95% bounds (hold at every look)."""

    estimate = fields.Float(allow_none=True)
    lower = fields.Float(allow_none=True)
    upper = fields.Float(allow_none=True)
    always_valid_lower = fields.Float(allow_none=True)
    always_valid_upper = fields.Float(allow_none=True)
    message = fields.String()


class MetricResultSchema(ma.Schema):
    users = fields.Integer()
    events = fields.Integer()
    rate = fields.Float()
    matured_users = fields.Integer(
        metadata={"description": "Users whose attribution window has closed (what the bandit and fail-fast count)"}
    )
    interval = fields.Nested(IntervalSchema)
    credible_interval = fields.Nested(IntervalSchema)
    value_count = fields.Integer()
    value_sum = fields.Float()
    value_mean = fields.Float()
    value_interval = fields.Nested(IntervalSchema, allow_none=True)
    difference = fields.Nested(RateComparisonSchema, allow_none=True)
    uplift = fields.Nested(RateComparisonSchema, allow_none=True)
    value_uplift = fields.Nested(UpliftSchema, allow_none=True)
    prob_beat_control = fields.Float(allow_none=True)
    revenue = fields.Nested(RevenueSchema, metadata={"description": "Money-carrying event types only"})
    cuped = fields.Nested(CupedSchema, metadata={"description": "conversion only"})


class RetentionSchema(ma.Schema):
    eligible = fields.Integer()
    retained = fields.Integer()
    rate = fields.Float(allow_none=True)
    interval = fields.Nested(IntervalSchema, allow_none=True)


class VariantResultSchema(ma.Schema):
    variant_id = fields.String()
    name = fields.String()
    is_control = fields.Boolean()
    config = fields.Dict()
    traffic_share = fields.Float()
    assigned_users = fields.Integer()
    weight = fields.Float()
    paused = fields.Boolean()
    metrics = fields.Dict(keys=fields.String(), values=fields.Nested(MetricResultSchema))
    prob_best = fields.Float()
    alpha = fields.Float()
    beta = fields.Float()
    d7_retention = fields.Nested(RetentionSchema, allow_none=True)
    net_revenue = fields.Nested(NetRevenueSchema, allow_none=True)
    ratios = fields.Nested(RatiosSchema, allow_none=True)


class SrmSchema(ma.Schema):
    chi2 = fields.Float(allow_none=True)
    p_value = fields.Float(allow_none=True)
    flagged = fields.Boolean()
    message = fields.String()


class ResultsOutSchema(ma.Schema):
    experiment_id = fields.String()
    name = fields.String()
    status = fields.String()
    mode = fields.String()
    primary_metric = fields.String()
    lower_is_better = fields.List(fields.String())
    variants = fields.List(fields.Nested(VariantResultSchema))
    periods = fields.Integer(metadata={"description": "Allocation periods the assignments span"})
    attribution_window_s = fields.Dict(keys=fields.String(), values=fields.Integer(allow_none=True))
    srm = fields.Nested(SrmSchema)
    d7_computed_at = fields.String(allow_none=True)
    bandit_computed_at = fields.String(allow_none=True)
    burn_in = fields.Boolean(allow_none=True)
    computed_at = fields.String()
    reporting_currency = fields.String()
    value_cap_percentile = fields.Float(allow_none=True)
    cuped_covariate_users = fields.Nested(CovariateUsersSchema)


class InsightSchema(ma.Schema):
    variant = fields.String()
    variant_id = fields.String()
    is_control = fields.Boolean()
    paused = fields.Boolean()
    conversion_rate = fields.Float()
    samples = fields.Integer()
    successes = fields.Integer()
    confidence_interval = fields.Nested(IntervalSchema)
    alpha = fields.Float()
    beta = fields.Float()
    prob_best = fields.Float()


class InsightsOutSchema(ma.Schema):
    experiment_id = fields.String()
    primary_metric = fields.String()
    insights = fields.List(fields.Nested(InsightSchema))
    recommendation = fields.String()
    fail_fast = fields.Dict()
    guardrails = fields.Dict()
    suggestions = fields.List(fields.Dict())
    srm = fields.Nested(SrmSchema)
    computed_at = fields.String()


class ReportQuerySchema(QuerySchema):
    experiment_id = fields.UUID()


class ReportFormatSchema(QuerySchema):
    format = fields.String(load_default="json", validate=validate.OneOf(("json", "markdown")))


class ReportSummarySchema(ma.Schema):
    id = fields.UUID()
    experiment_id = fields.UUID()
    experiment_name = fields.String()
    report_date = fields.Date()
    created_at = fields.DateTime()
    recommendation = fields.String(allow_none=True)


class ReportOutSchema(ReportSummarySchema):
    content = fields.Dict()


# --- Views -----------------------------------------------------------------------

@blp.route("/<uuid:experiment_id>/results")
class Results(MethodView):
    @require("results")
    @blp.response(200, ResultsOutSchema)
    def get(self, experiment_id: uuid.UUID):
        """Per variant: assigned users, weight, every event type's rate with intervals, uplift
        versus control, P(best), P(beat control), α and β; plus SRM and day-7 retention."""
        return sira_results.experiment_results(context.read_session(), context.redis_client(), experiment_id)


@blp.route("/<uuid:experiment_id>/insights")
class Insights(MethodView):
    @require("insights")
    @blp.response(200, InsightsOutSchema)
    def get(self, experiment_id: uuid.UUID):
        """SIRA's reading of the experiment: posteriors, recommendation, fail-fast and
        guardrail status, and suggested next experiments."""
        return sira_insights.experiment_insights(context.read_session(), experiment_id)




@reports_blp.route("")
class ReportCollection(MethodView):
    @require("reports")
    @reports_blp.arguments(ReportQuerySchema, location="query")
    @reports_blp.response(200, ReportSummarySchema(many=True))
    @reports_blp.paginate()
    def get(self, query: dict, pagination_parameters):
        """Stored daily reports, newest first (filter by ``experiment_id``; ``X-Pagination`` header)."""
        items, total = sira_reports.list_reports(
            context.read_session(),
            experiment_id=query.get("experiment_id"),
            offset=context.page_offset(pagination_parameters),
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return items


@reports_blp.route("/<uuid:report_id>")
class ReportItem(MethodView):
    @require("reports")
    @reports_blp.arguments(ReportFormatSchema, location="query")
    @reports_blp.response(200, ReportOutSchema)
    def get(self, query: dict, report_id: uuid.UUID):
        """One report as JSON, or as Markdown with ``?format=markdown``."""
        report = sira_reports.get_report(context.read_session(), report_id)
        if query["format"] == "markdown":
            return Response(report["markdown"], status=200, mimetype="text/markdown")
        return report

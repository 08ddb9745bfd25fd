"""Response schemas of the money results (revenue, net revenue, ratio metrics, CUPED)."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields


class EstimateSchema(ma.Schema):
    estimate = fields.Float(allow_none=True)
    lower = fields.Float(allow_none=True)
    upper = fields.Float(allow_none=True)


class MoneyUpliftSchema(EstimateSchema):
    message = fields.String()


class CapSchema(ma.Schema):
    percentile = fields.Float(allow_none=True, metadata={"description": "value_cap_percentile; null: no capping"})
    value = fields.Float(allow_none=True, metadata={"description": "The cap, reporting currency per user"})
    users_capped = fields.Integer()


class CupedSchema(EstimateSchema):
    uplift = fields.Nested(MoneyUpliftSchema, allow_none=True)
    variance_reduction = fields.Float(allow_none=True, metadata={"description": "Share of per-user variance removed"})
    theta = fields.Float(metadata={"description": "Pooled adjustment coefficient Cov(y, x) / Var(x)"})


class CurrencyBreakdownSchema(ma.Schema):
    total_minor = fields.Integer(metadata={"description": "Exact total in this currency's minor units"})
    per_user = fields.Nested(EstimateSchema, metadata={"description": "Per assigned user, this currency's major units"})
    users = fields.Integer()


class RevenueSchema(ma.Schema):
    currency = fields.String(metadata={"description": "The experiment's reporting_currency"})
    total = fields.Float(metadata={"description": "Converted at each event day's rate, rounded to the currency"})
    total_minor = fields.Integer()
    per_user = fields.Nested(EstimateSchema, metadata={"description": "Per assigned user, capped"})
    per_user_uncapped = fields.Nested(EstimateSchema)
    per_converter = fields.Nested(EstimateSchema, metadata={"description": "Per user with the event (delta method)"})
    per_converter_uplift = fields.Nested(MoneyUpliftSchema, allow_none=True)
    uplift = fields.Nested(MoneyUpliftSchema, allow_none=True)
    uplift_uncapped = fields.Nested(MoneyUpliftSchema, allow_none=True)
    cap = fields.Nested(CapSchema)
    by_currency = fields.Dict(keys=fields.String(), values=fields.Nested(CurrencyBreakdownSchema))
    unconverted_events = fields.Integer(metadata={"description": "Events on days without a rate: in no converted number"})
    unconverted_currencies = fields.List(fields.String())
    cuped = fields.Nested(CupedSchema)


class NetRevenueSchema(ma.Schema):
    currency = fields.String()
    total = fields.Float()
    total_minor = fields.Integer()
    per_user = fields.Nested(EstimateSchema)
    uplift = fields.Nested(MoneyUpliftSchema, allow_none=True)
    unconverted_events = fields.Integer()


class RatioSchema(EstimateSchema):
    uplift = fields.Nested(MoneyUpliftSchema, allow_none=True)
    message = fields.String()


class RatiosSchema(ma.Schema):
    revenue_per_converter = fields.Nested(RatioSchema)
    refunds_per_converter = fields.Nested(RatioSchema)
    refunded_amount_per_revenue = fields.Nested(RatioSchema)


class CovariateUsersSchema(ma.Schema):
    pre_exposure_value = fields.Integer()
    txn_count = fields.Integer()
    none = fields.Integer()

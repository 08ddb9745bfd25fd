"""Exchange rates resource: publish a set (append-only, audited) and read the rates in force on a day."""
from __future__ import annotations

from decimal import Decimal

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from core.money import MONEY_CURRENCIES
from services import fx as service

from . import context
from .auth import require
from .input_guard import Blueprint
from .schemas import QuerySchema, StrictSchema

blp = Blueprint("fx_rates", __name__, url_prefix="/api/fx-rates", description="Exchange rates used to price money metrics")

#: Rates are stored as numeric(30, 12).
RATE_PLACES = 12
MAX_RATE = Decimal(10) ** 17
MAX_RATES_PER_SET = 300


def _money_currency(value: str) -> None:
    if value not in MONEY_CURRENCIES:
        raise ma.ValidationError(f"{value!r} is not an upper-case ISO 4217 code of a currency with a minor unit")


def _rate(value: Decimal) -> None:
    if not value.is_finite() or value <= 0:
        raise ma.ValidationError("must be a positive finite number")
    if value >= MAX_RATE:
        raise ma.ValidationError(f"must be below {MAX_RATE:.0e}")
    if value != value.quantize(Decimal(1).scaleb(-RATE_PLACES)):
        raise ma.ValidationError(f"at most {RATE_PLACES} decimal places")


class RateSetSchema(StrictSchema):
    base = fields.String(required=True, validate=_money_currency, metadata={"example": "EUR"})
    valid_from = fields.Date(required=True, metadata={"description": "First UTC day the set prices."})
    rates = fields.Dict(
        keys=fields.String(validate=_money_currency),
        values=fields.Decimal(allow_nan=False, validate=_rate, metadata={"type": "number"}),
        required=True,
        validate=validate.Length(min=1, max=MAX_RATES_PER_SET),
        metadata={"description": "Units of each currency per one base, e.g. {\"XOF\": 655.957, \"USD\": 1.05}."},
    )

    @ma.validates_schema
    def base_is_not_rated(self, data: dict, **kwargs: object) -> None:
        if data.get("base") in (data.get("rates") or {}):
            raise ma.ValidationError({"rates": [f"must not price the base {data['base']} itself (it is 1)"]})


class RateSetOutSchema(ma.Schema):
    base = fields.String()
    valid_from = fields.String(metadata={"format": "date"})
    revision = fields.Integer(metadata={"description": "1 for a new set; +1 each time the same set is published again."})
    rates = fields.Dict(keys=fields.String(), values=fields.Float())


class RatesOnQuerySchema(QuerySchema):
    on = fields.Date(required=True, metadata={"description": "The UTC day whose rates are wanted."})
    base = fields.String(validate=_money_currency)


class RateInForceSchema(ma.Schema):
    rate = fields.Float()
    valid_from = fields.String(metadata={"format": "date"})
    revision = fields.Integer()


class RatesOnSetSchema(ma.Schema):
    base = fields.String()
    rates = fields.Dict(keys=fields.String(), values=fields.Nested(RateInForceSchema))


class RatesOnOutSchema(ma.Schema):
    on = fields.String(metadata={"format": "date"})
    sets = fields.List(fields.Nested(RatesOnSetSchema))


@blp.route("")
class FxRates(MethodView):
    @require("fx_rates")
    @blp.arguments(RateSetSchema)
    @blp.response(200, RateSetOutSchema)
    def put(self, data: dict):
        """Publish a rate set; the same base and valid_from again adds a revision (nothing is edited)."""
        stored = service.publish(context.session(), data["base"], data["valid_from"], data["rates"], context.actor())
        context.session().commit()
        return stored

    @require("fx_rates")
    @blp.arguments(RatesOnQuerySchema, location="query")
    @blp.response(200, RatesOnOutSchema)
    @blp.alt_response(404, description="No set has this base")
    def get(self, query: dict):
        """The rates in force on a day, per base, each with the set (valid_from, revision) it comes from."""
        return service.rates_on(context.session(), query["on"], query.get("base"))

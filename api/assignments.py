"""Assignments resource: which variant a Molam ID sees in an experiment."""
from __future__ import annotations

import uuid

import marshmallow as ma
from flask import g, jsonify, request
from marshmallow import fields, validate

from core.codes import COUNTRIES, CURRENCIES, LANGUAGES
from core.errors import Invalid
from services.experiments import assignment as service
from services.sdk import exposures as exposure_service

from . import context, ratelimit
from .auth import require
from .input_guard import Blueprint, request_json
from .schemas import StrictSchema, _code_in

blp = Blueprint(
    "assignments",
    __name__,
    url_prefix="/api/experiments",
    description="Sticky assignment of users to variants (the hot path Molam products call)",
)


#: The assign body's limits, shared by the schema and its fast reader (:func:`read_assign_body`).
MOLAM_ID_MAX, REGION_MAX, DEVICE_MAX = 200, 64, 32
TXN_COUNT_MAX = 2**31 - 1
PRE_EXPOSURE_LIMIT = 1e15


class AssignRequestSchema(StrictSchema):
    molam_id = fields.String(required=True, validate=validate.Length(min=1, max=MOLAM_ID_MAX))
    country = fields.String(validate=_code_in(COUNTRIES, "ISO 3166-1 alpha-2 country code", upper=True))
    lang = fields.String(validate=_code_in(LANGUAGES, "ISO 639 language code", upper=False))
    currency = fields.String(validate=_code_in(CURRENCIES, "ISO 4217 currency code", upper=True))
    region = fields.String(validate=validate.Length(min=1, max=REGION_MAX))
    device = fields.String(validate=validate.Length(min=1, max=DEVICE_MAX))
    txn_count = fields.Integer(strict=True, validate=validate.Range(min=0, max=TXN_COUNT_MAX))
    pre_exposure_value = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=-PRE_EXPOSURE_LIMIT, max=PRE_EXPOSURE_LIMIT),
        metadata={
            "description": "A number known before exposure (e.g. the user's spend over the last 30 days in the "
            "reporting currency), stored with the first assignment: the CUPED covariate (txn_count when absent)."
        },
    )

    @ma.post_load
    def to_context(self, data: dict, **kwargs: object) -> service.UserContext:
        return service.UserContext(**data)


# One instance, not the class: webargs would build a schema per request from a class.
ASSIGN_REQUEST = AssignRequestSchema()

_ASSIGN_FIELDS = frozenset(AssignRequestSchema._declared_fields)
_TEXT_LIMITS = (("molam_id", 1, MOLAM_ID_MAX), ("region", 1, REGION_MAX), ("device", 1, DEVICE_MAX))
_CODES = (("country", COUNTRIES, True), ("lang", LANGUAGES, False), ("currency", CURRENCIES, True))


def read_assign_body(body: object) -> service.UserContext | None:
    """:data:`ASSIGN_REQUEST`'s ``load`` without marshmallow, for bodies it accepts as they are.

    Returns the same :class:`~services.experiments.assignment.UserContext` the schema
    would, or ``None`` for any body this does not accept outright: unknown or null
    fields, wrong types, values out of range, and the values the schema converts (a
    number given as a string). The schema then reads the body and, when it refuses it,
    writes the 422 itself, so errors keep their field names and messages
    (tests/api/test_assignment_body.py checks both agree on a matrix of bodies).
    """
    if type(body) is not dict or not _ASSIGN_FIELDS.issuperset(body) or None in body.values():
        return None  # not an object, unknown fields, or "Field may not be null.": the schema says which
    for name, shortest, longest in _TEXT_LIMITS:
        if name in body:
            value = body[name]
            if type(value) is not str or not shortest <= len(value) <= longest:
                return None
        elif name == "molam_id":
            return None
    for name, codes, upper in _CODES:
        if name in body:
            value = body[name]
            if type(value) is not str or value not in codes or value != (value.upper() if upper else value.lower()):
                return None
    txn_count = body.get("txn_count")
    if txn_count is not None and (type(txn_count) is not int or not 0 <= txn_count <= TXN_COUNT_MAX):
        return None
    pre_exposure_value = body.get("pre_exposure_value")
    if pre_exposure_value is not None:
        if type(pre_exposure_value) is int:
            if not -PRE_EXPOSURE_LIMIT <= pre_exposure_value <= PRE_EXPOSURE_LIMIT:
                return None
            pre_exposure_value = float(pre_exposure_value)
        elif type(pre_exposure_value) is not float or not -PRE_EXPOSURE_LIMIT <= pre_exposure_value <= PRE_EXPOSURE_LIMIT:
            return None
    return service.UserContext(
        molam_id=body["molam_id"],
        country=body.get("country"),
        lang=body.get("lang"),
        currency=body.get("currency"),
        region=body.get("region"),
        device=body.get("device"),
        txn_count=txn_count,
        pre_exposure_value=pre_exposure_value,
    )


blp.ARGUMENTS_PARSER.register_fast_reader(ASSIGN_REQUEST, read_assign_body)


class AssignmentOutSchema(ma.Schema):
    experiment_id = fields.String(metadata={"format": "uuid"})
    molam_id = fields.String()
    eligible = fields.Boolean()
    variant_id = fields.String(allow_none=True, metadata={"format": "uuid"})
    variant_name = fields.String()
    is_control = fields.Boolean()
    config = fields.Raw(metadata={"type": "object"})
    assigned_at = fields.String(metadata={"format": "date-time"})
    new = fields.Boolean(metadata={"description": "true when this call made the assignment"})
    reason = fields.String(metadata={"description": "why the user is not eligible (eligible: false only)"})


class StoredAssignmentOutSchema(ma.Schema):
    experiment_id = fields.String(metadata={"format": "uuid"})
    molam_id = fields.String()
    variant_id = fields.String(metadata={"format": "uuid"})
    variant_name = fields.String()
    is_control = fields.Boolean()
    config = fields.Raw(metadata={"type": "object"})
    assigned_at = fields.String(metadata={"format": "date-time"})


@blp.route("/<uuid:experiment_id>/assign", methods=["POST"])
@require("assign")
@blp.arguments(ASSIGN_REQUEST)
@blp.response(200, AssignmentOutSchema)
@blp.alt_response(404, description="Unknown experiment")
@blp.alt_response(409, description="Experiment not running")
@blp.alt_response(429, description="Rate limit exceeded (Retry-After)")
@blp.alt_response(503, description="PostgreSQL unreachable and no cached assignment (Retry-After)")
def assign(user: service.UserContext, experiment_id: uuid.UUID):
    """Assign a user to a variant (sticky), or say why they are not eligible."""
    # The service builds the response in its final shape; returning a Response
    # skips a second marshmallow pass on the hot path (flask-smorest passes
    # Responses through), while the schema above still documents it.
    return context.json_response(service.assign(
        context.redis_client(), experiment_id, user, ratelimit.budget(), caller_roles=g.principal.roles
    ))


@blp.route("/<uuid:experiment_id>/assignment/<string(maxlength=200):molam_id>", methods=["GET"])
@require("assign")
@blp.response(200, StoredAssignmentOutSchema)
@blp.alt_response(404, description="Unknown experiment, or no assignment for this user")
@blp.alt_response(429, description="Rate limit exceeded (Retry-After)")
@blp.alt_response(503, description="PostgreSQL unreachable and the assignment not cached (Retry-After)")
def get_assignment(experiment_id: uuid.UUID, molam_id: str):
    """The user's stored assignment in an experiment."""
    return context.json_response(service.stored_assignment(
        context.redis_client(), experiment_id, molam_id, ratelimit.budget(), caller_roles=g.principal.roles
    ))


# --- exposures decided by SDK clients ---------------------------------------------------

batch_blp = Blueprint(
    "assignment_batches",
    __name__,
    url_prefix="/api/assignments",
    description="Exposures decided locally by SDK clients, recomputed and stored by the server",
)


class ExposureSchema(AssignRequestSchema):
    """One exposure: the assign body plus what the client decided and when."""

    experiment_id = fields.UUID(required=True)
    variant_id = fields.UUID(required=True)
    evaluated_at = fields.AwareDateTime(required=True, metadata={"description": "ISO 8601 with a UTC offset"})

    @ma.post_load
    def to_context(self, data: dict, **kwargs: object) -> exposure_service.Exposure:
        experiment_id = str(data.pop("experiment_id"))
        variant_id = str(data.pop("variant_id"))
        evaluated_at = data.pop("evaluated_at")
        return exposure_service.Exposure(experiment_id, variant_id, service.UserContext(**data), evaluated_at)


class ExposureBatchSchema(ma.Schema):
    exposures = fields.List(
        fields.Nested(ExposureSchema), required=True,
        validate=validate.Length(min=1, max=exposure_service.MAX_BATCH),
    )


EXPOSURE = ExposureSchema()


class AcceptedExposureSchema(ma.Schema):
    index = fields.Integer()
    experiment_id = fields.String(metadata={"format": "uuid"})
    molam_id = fields.String()
    variant_id = fields.String(metadata={"format": "uuid"})
    new = fields.Boolean(metadata={"description": "true when this batch recorded the assignment"})


class RejectedExposureSchema(ma.Schema):
    index = fields.Integer()
    experiment_id = fields.String()
    molam_id = fields.String()
    variant_id = fields.String()
    reason = fields.String(
        metadata={
            "description": "invalid (see errors), unknown_experiment, service_not_allowed, not_running, not_fixed_split, unknown_variant, "
            "variant_mismatch (expected_variant_id), conflicts_with_stored (stored_variant_id), "
            "definition_changed, or a targeting reason / outside_coverage"
        }
    )
    errors = fields.Dict()
    expected_variant_id = fields.String()
    stored_variant_id = fields.String()


class ExposureBatchOutSchema(ma.Schema):
    accepted = fields.List(fields.Nested(AcceptedExposureSchema))
    rejected = fields.List(fields.Nested(RejectedExposureSchema))


def _invalid_item(index: int, item: object, errors: dict) -> dict:
    out = {"index": index, "reason": "invalid", "errors": errors}
    if isinstance(item, dict):
        for key in ("experiment_id", "molam_id", "variant_id"):
            if isinstance(item.get(key), str):
                out[key] = item[key]
    return out


@batch_blp.route("/batch", methods=["POST"])
@require("record_exposures")
@batch_blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": ExposureBatchSchema}}})
@batch_blp.response(200, ExposureBatchOutSchema)
@batch_blp.alt_response(429, description="Rate limit exceeded (Retry-After)")
def record_batch():
    """Store up to 1,000 locally decided exposures; each is recomputed and kept only if it matches."""
    body = request_json() if request.is_json else None
    items = body.get("exposures") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise Invalid("exposures must be a non-empty list", errors={"json": {"exposures": ["a non-empty list is required"]}})
    if len(items) > exposure_service.MAX_BATCH:
        raise Invalid(
            f"at most {exposure_service.MAX_BATCH} exposures per batch, got {len(items)}",
            errors={"json": {"exposures": [f"at most {exposure_service.MAX_BATCH} items"]}},
        )
    unknown = sorted(set(body) - {"exposures"})
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(unknown)}", errors={"json": {k: ["Unknown field."] for k in unknown}})
    ratelimit.spend("assignments_batch")
    valid, indexes, rejected = [], [], []
    for index, item in enumerate(items):
        try:
            valid.append(EXPOSURE.load(item))
            indexes.append(index)
        except ma.ValidationError as exc:
            rejected.append(_invalid_item(index, item, exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}))
    accepted = []
    for verdict in exposure_service.record_exposures(context.redis_client(), valid, caller_roles=g.principal.roles):
        out = verdict.as_dict()
        out["index"] = indexes[verdict.index]
        (accepted if verdict.accepted else rejected).append(out)
    rejected.sort(key=lambda r: r["index"])
    return jsonify({"accepted": accepted, "rejected": rejected})

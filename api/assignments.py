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


class AssignRequestSchema(StrictSchema):
    molam_id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    country = fields.String(validate=_code_in(COUNTRIES, "ISO 3166-1 alpha-2 country code", upper=True))
    lang = fields.String(validate=_code_in(LANGUAGES, "ISO 639 language code", upper=False))
    currency = fields.String(validate=_code_in(CURRENCIES, "ISO 4217 currency code", upper=True))
    region = fields.String(validate=validate.Length(min=1, max=64))
    device = fields.String(validate=validate.Length(min=1, max=32))
    txn_count = fields.Integer(strict=True, validate=validate.Range(min=0, max=2**31 - 1))
    pre_exposure_value = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=-1e15, max=1e15),
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

"""Assignments resource: which variant a Molam ID sees in an experiment."""
from __future__ import annotations

import uuid

import marshmallow as ma
from flask import jsonify
from flask_smorest import Blueprint
from marshmallow import fields, validate

from core.codes import COUNTRIES, CURRENCIES, LANGUAGES
from services.experiments import assignment as service

from . import context
from .auth import require
from .ratelimit import rate_limited
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
@rate_limited
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
    return jsonify(service.assign(context.redis_client(), experiment_id, user))


@blp.route("/<uuid:experiment_id>/assignment/<string(maxlength=200):molam_id>", methods=["GET"])
@require("assign")
@rate_limited
@blp.response(200, StoredAssignmentOutSchema)
@blp.alt_response(404, description="Unknown experiment, or no assignment for this user")
@blp.alt_response(429, description="Rate limit exceeded (Retry-After)")
@blp.alt_response(503, description="PostgreSQL unreachable and the assignment not cached (Retry-After)")
def get_assignment(experiment_id: uuid.UUID, molam_id: str):
    """The user's stored assignment in an experiment."""
    return jsonify(service.stored_assignment(context.redis_client(), experiment_id, molam_id))

"""Metric ingestion endpoints: ``track`` one event, or post a batch of up to 1,000.

Both validate, check the user's assignment and stage the events in Redis for the
Celery drain (:mod:`services.ingestion`); neither writes metric rows. A 202 means
the event is durably queued; the same ``event_id`` sent again is counted once.
"""
from __future__ import annotations

import uuid

import marshmallow as ma
from flask import current_app, g, request
from marshmallow import fields, validate

from core.errors import DomainError, Forbidden, Invalid
from models.enums import EVENT_TYPES
from services.ingestion import staging as ingestion

from . import context, ratelimit
from .auth import require
from .input_guard import Blueprint, request_json

blp = Blueprint("events", __name__, url_prefix="/api", description="Metric ingestion (queued, counted exactly once)")


# These schemas document the bodies in OpenAPI. Validation itself is
# services.ingestion.records.validate_event (hand-written for the batch path's speed);
# tests/api/test_track.py checks that both describe the same fields and limits.
class TrackEventSchema(ma.Schema):
    event_id = fields.String(
        validate=validate.Length(min=1, max=ingestion.MAX_EVENT_ID),
        metadata={"description": "Client idempotency key (generated when absent): resending it counts once."},
    )
    variant_id = fields.UUID(metadata={"description": "Must match the user's assignment when given."})
    molam_id = fields.String(required=True, validate=validate.Length(min=1, max=ingestion.MAX_MOLAM_ID))
    event_type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    value = fields.Raw(
        metadata={
            "oneOf": [{"type": "number"}, {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"}],
            "description": (
                "Without currency: a finite number (duration, score). With currency: the amount, "
                "a JSON number or decimal string with at most the currency's decimals (XOF 0, EUR 2, KWD 3), "
                "stored exactly as integer minor units."
            ),
        }
    )
    currency = fields.String(
        metadata={"description": "ISO 4217 code, upper-case: makes the event money (value is then required)."}
    )
    metadata = fields.Dict(metadata={"description": f"JSON object of at most {ingestion.MAX_METADATA_BYTES} bytes."})
    occurred_at = fields.DateTime(metadata={"description": "ISO 8601; defaults to the time received."})


class BatchEventSchema(TrackEventSchema):
    experiment_id = fields.UUID(required=True)


class BatchSchema(ma.Schema):
    events = fields.List(
        fields.Nested(BatchEventSchema), required=True, validate=validate.Length(min=1, max=ingestion.MAX_BATCH_REQUEST)
    )


class TrackAcceptedSchema(ma.Schema):
    event_id = fields.String()
    status = fields.String(
        metadata={
            "description": '"queued"; "holdout" when the user is a holdout member of the experiment '
            "(the event is kept and counted against the holdout)."
        }
    )


class RejectedEventSchema(ma.Schema):
    index = fields.Integer()
    reason = fields.String(metadata={"description": "service_not_allowed: the experiment's allowed_services leave this service out"})
    errors = fields.Dict(metadata={"description": "Field name → messages."})


class BatchAcceptedSchema(ma.Schema):
    accepted = fields.List(
        fields.String(), metadata={"description": "Event ids queued (or kept for a holdout), in request order."}
    )
    rejected = fields.List(fields.Nested(RejectedEventSchema))


def caller(scope: str) -> ingestion.Caller:
    """The staging call's caller: backlog share, ``allowed_services`` scope and the ``scope`` budget."""
    principal = g.principal
    settings = current_app.extensions["settings"]
    return ingestion.Caller(
        principal.sub, principal.roles, settings.ingest_service_share, ratelimit.budget(scope),
        settings.ingest_max_backlog_entries,
    )


def json_body() -> object:
    """The JSON body through the guard, numbers with a fraction or exponent keeping their decimal text (exact money)."""
    if not request.is_json:
        raise Invalid("the request body must be JSON", errors={"json": {"_schema": ["invalid or missing JSON body"]}})
    return request_json(exact_decimals=True)


@blp.route("/experiments/<uuid:experiment_id>/track", methods=["POST"])
@require("track")
@blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": TrackEventSchema}}})
@blp.response(202, TrackAcceptedSchema)
@blp.alt_response(404, description="Unknown experiment")
@blp.alt_response(409, description="Experiment archived")
@blp.alt_response(403, description="The experiment's allowed_services leave this service out")
@blp.alt_response(422, description="Invalid event, unassigned user or variant mismatch (errors name the field)")
@blp.alt_response(429, description="Rate limit, or this caller's share of the backlog, exceeded (Retry-After)")
@blp.alt_response(503, description="Redis unreachable or backlog full: nothing was queued (Retry-After)")
def track(experiment_id: uuid.UUID):
    """Queue one event for an assigned user."""
    received_at, received_iso = ingestion.now_utc()
    record, errors = ingestion.validate_event(
        json_body(), experiment_id=str(experiment_id), received_at=received_at, received_iso=received_iso
    )
    if errors or record is None:
        raise Invalid("invalid event", errors={"json": errors})
    record = ingestion.accept_one(context.redis_client(), context.session, record, context.request_id(), caller("track"))
    ingestion.count_accepted([record])
    # The final shape, as a Response: flask-smorest passes it through instead of
    # dumping the dict through the schema again (the schema still documents it).
    return context.json_response({"event_id": record.event_id, "status": "queued" if record.variant_id is not None else "holdout"}, 202)


@blp.route("/events/batch", methods=["POST"])
@require("track")
@blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": BatchSchema}}})
@blp.response(202, BatchAcceptedSchema)
@blp.alt_response(422, description="The envelope is invalid (per-event problems are listed in `rejected`)")
@blp.alt_response(429, description="Rate limit, or this caller's share of the backlog, exceeded: nothing was queued (Retry-After)")
@blp.alt_response(503, description="Redis unreachable or backlog full: nothing was queued (Retry-After)")
def batch():
    """Queue up to 1,000 events; valid ones are queued even when neighbours are rejected."""
    body = json_body()
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= ingestion.MAX_BATCH_REQUEST:
        raise Invalid(
            "invalid batch",
            errors={"json": {"events": [f"must be a list of 1 to {ingestion.MAX_BATCH_REQUEST} events"]}},
        )
    if len(body) > 1:
        unknown = sorted(str(k) for k in body if k != "events")
        raise Invalid("invalid batch", errors={"json": {name: ["unknown field"] for name in unknown}})
    received_at, received_iso = ingestion.now_utc()
    records: list[tuple[int, ingestion.StagedEvent]] = []
    rejected: list[dict] = []
    for index, raw in enumerate(events):
        record, errors = ingestion.validate_event(
            raw, experiment_id=None, received_at=received_at, received_iso=received_iso
        )
        if errors:
            rejected.append({"index": index, "errors": errors})
        else:
            records.append((index, record))
    accepted: list[ingestion.StagedEvent] = []
    held_out: list[ingestion.StagedEvent] = []
    accepted_ids: list[str] = []
    staging = caller("events_batch")
    if not records:
        ratelimit.spend("events_batch")
    else:
        pairs = [(record.experiment_id, record.molam_id) for _, record in records]
        found = ingestion.lookup(context.redis_client(), context.session, pairs, staging.budget)
        for index, record in records:
            try:
                accepted.append(ingestion.check_assignment(record, found, staging.roles))
            except DomainError as refusal:
                if isinstance(refusal, Invalid) and ingestion.accept_for_holdout(context.session, record, found):
                    held_out.append(record)
                elif isinstance(refusal, Forbidden):
                    rejected.append({"index": index, "reason": "service_not_allowed", "errors": refusal.errors["json"]})
                    continue
                else:
                    rejected.append({"index": index, "errors": refusal.errors["json"]})
                    continue
            accepted_ids.append(record.event_id)
        ingestion.stage(context.redis_client(), accepted, context.request_id(), staging)
        ingestion.count_accepted(accepted + held_out)
    rejected.sort(key=lambda r: r["index"])
    return {"accepted": accepted_ids, "rejected": rejected}

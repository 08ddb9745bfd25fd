"""Schedules: upcoming scheduled starts and stops, and every attempt to run them."""
from __future__ import annotations

import uuid

import marshmallow as ma
from marshmallow import fields

from services.experiments import lifecycle
from services.experiments import schedules as service

from . import context
from .auth import require
from .input_guard import Blueprint

blp = Blueprint("schedules", __name__, url_prefix="/api", description="Scheduled starts and stops")


class AttemptSchema(ma.Schema):
    id = fields.Integer()
    experiment_id = fields.UUID()
    action = fields.String()
    scheduled_for = fields.DateTime()
    attempted_at = fields.DateTime()
    succeeded = fields.Boolean()
    error = fields.String(allow_none=True)


class ScheduledSchema(ma.Schema):
    experiment_id = fields.UUID()
    name = fields.String()
    status = fields.String()
    action = fields.String(metadata={"description": "What happens next: start or stop."})
    at = fields.DateTime()
    start_at = fields.DateTime(allow_none=True)
    end_at = fields.DateTime(allow_none=True)


class SchedulesOutSchema(ma.Schema):
    upcoming = fields.List(fields.Nested(ScheduledSchema))
    failures = fields.List(fields.Nested(AttemptSchema), metadata={"description": "Latest failed attempts (retried)."})


class ExperimentScheduleSchema(ma.Schema):
    experiment_id = fields.UUID()
    start_at = fields.DateTime(allow_none=True)
    end_at = fields.DateTime(allow_none=True)
    attempts = fields.List(fields.Nested(AttemptSchema))


def _scheduled(experiment) -> dict:
    starting = experiment.status == "draft"
    return {
        "experiment_id": experiment.id,
        "name": experiment.name,
        "status": experiment.status,
        "action": "start" if starting else "stop",
        "at": experiment.start_at if starting else experiment.end_at,
        "start_at": experiment.start_at,
        "end_at": experiment.end_at,
    }


@blp.route("/schedules", methods=["GET"])
@require("schedules")
@blp.response(200, SchedulesOutSchema)
def schedules():
    """Upcoming scheduled starts and stops, soonest first, and the latest failed attempts."""
    session = context.session()
    return {
        "upcoming": [_scheduled(e) for e in service.upcoming(session)],
        "failures": service.attempts(session, failed_only=True),
    }


@blp.route("/experiments/<uuid:experiment_id>/schedule", methods=["GET"])
@require("schedules")
@blp.response(200, ExperimentScheduleSchema)
def experiment_schedule(experiment_id: uuid.UUID):
    """The experiment's start_at/end_at and every attempt the scheduler made, newest first."""
    session = context.session()
    experiment = lifecycle.get_experiment(session, experiment_id)
    return {
        "experiment_id": experiment.id,
        "start_at": experiment.start_at,
        "end_at": experiment.end_at,
        "attempts": service.attempts(session, experiment_id=experiment_id),
    }

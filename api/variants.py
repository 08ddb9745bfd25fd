"""Pausing and resuming a variant (ops): the arm takes no new users; its users keep it."""
from __future__ import annotations

import logging
import uuid

from flask import current_app
from marshmallow import fields, validate

from services.analysis import jobs as sira_jobs
from services.experiments import lifecycle as experiment_service

from . import context
from .auth import require
from .experiments import commit_mutation
from .input_guard import Blueprint
from .schemas import ExperimentOutSchema, StrictSchema

log = logging.getLogger(__name__)

blp = Blueprint("variants", __name__, url_prefix="/api/experiments", description="Pausing and resuming variants")


class PauseInSchema(StrictSchema):
    reason = fields.String(validate=validate.Length(max=1000), load_default=None)


def _refresh_bandit_state(experiment_id: uuid.UUID) -> None:
    """Republish weights at once so a resumed arm does not wait a cycle for traffic."""
    settings = current_app.extensions["settings"]
    try:
        sira_jobs.recompute_posteriors(
            context.redis_client(), recompute_interval_s=settings.recompute_interval_s, experiment_ids=[experiment_id]
        )
    except Exception:  # the pause is committed; the next beat tick catches up
        log.exception("could not refresh bandit state of %s after a pause change", experiment_id)


def _pause_view(paused: bool):
    action = "pause" if paused else "resume"

    @require("pause_variant")
    @blp.arguments(PauseInSchema, required=False)
    @blp.response(200, ExperimentOutSchema)
    def view(data: dict | None, experiment_id: uuid.UUID, variant_id: uuid.UUID):
        experiment = experiment_service.set_variant_paused(
            context.session(), experiment_id, variant_id,
            paused=paused, actor=context.actor(), reason=(data or {}).get("reason"),
        )
        commit_mutation(experiment_id)
        _refresh_bandit_state(experiment_id)
        return experiment

    view.__name__ = f"{action}_variant"
    view.__doc__ = (
        "Pause a variant: it receives no new users; users already in it keep it."
        if paused
        else "Resume a paused variant."
    )
    blp.route(f"/<uuid:experiment_id>/variants/<uuid:variant_id>/{action}", methods=["POST"])(view)


_pause_view(True)
_pause_view(False)

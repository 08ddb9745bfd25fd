"""Experiments resource: CRUD and lifecycle transitions."""
from __future__ import annotations

import uuid

from flask import current_app
from flask.views import MethodView

from services import cache
from services.experiments import lifecycle as service

from . import context
from .auth import require
from .input_guard import Blueprint
from .schemas import (
    ExperimentCreateSchema,
    ExperimentListQuerySchema,
    ExperimentOutSchema,
    ExperimentUpdateSchema,
)

blp = Blueprint("experiments", __name__, url_prefix="/api/experiments", description="Experiment definitions and lifecycle")


def approvals_required() -> bool:
    return current_app.extensions["settings"].approvals_required


def commit_mutation(experiment_id: uuid.UUID) -> None:
    """Commit the request's mutation (503 and rolled back when the cache cannot be invalidated)."""
    cache.commit_invalidating(context.session(), context.redis_client(), experiment_id)


@blp.route("")
class ExperimentCollection(MethodView):
    @require("list")
    @blp.arguments(ExperimentListQuerySchema, location="query")
    @blp.response(200, ExperimentOutSchema(many=True))
    @blp.paginate()
    def get(self, query: dict, pagination_parameters):
        """List experiments, newest first: filter by ``status``, ``mode``, owner (``created_by``)
        and a name search (``q``); ``X-Pagination`` header."""
        items, total = service.list_experiments(
            context.session(),
            status=query.get("status"),
            mode=query.get("mode"),
            search=query.get("q"),
            created_by=query.get("created_by"),
            layer_id=query.get("layer_id"),
            offset=context.page_offset(pagination_parameters),
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return items

    @require("create")
    @blp.arguments(ExperimentCreateSchema)
    @blp.response(201, ExperimentOutSchema)
    def post(self, data: dict):
        """Create a draft experiment."""
        data.setdefault("reporting_currency", current_app.extensions["settings"].reporting_currency)
        experiment = service.create_experiment(
            context.session(), data, context.actor(), approvals_required=approvals_required()
        )
        context.session().commit()
        return experiment


@blp.route("/<uuid:experiment_id>")
class ExperimentItem(MethodView):
    @require("get")
    @blp.response(200, ExperimentOutSchema)
    def get(self, experiment_id: uuid.UUID):
        """Get one experiment with its variants."""
        return service.get_experiment(context.session(), experiment_id)

    @require("update")
    @blp.arguments(ExperimentUpdateSchema)
    @blp.response(200, ExperimentOutSchema)
    def patch(self, changes: dict, experiment_id: uuid.UUID):
        """Update a draft freely (voiding any approval); running: name, description, end_at; stopped: name, description."""
        experiment = service.update_experiment(
            context.session(), experiment_id, changes, context.actor(), approvals_required=approvals_required()
        )
        commit_mutation(experiment_id)
        return experiment

    @require("delete")
    @blp.response(204)
    def delete(self, experiment_id: uuid.UUID):
        """Delete a draft experiment (anything else: archive it)."""
        service.delete_experiment(context.session(), experiment_id, context.actor())
        commit_mutation(experiment_id)


def _transition_view(action: str, doc: str):
    @require(action)
    @blp.response(200, ExperimentOutSchema)
    def view(experiment_id: uuid.UUID):
        experiment = service.transition(
            context.session(), experiment_id, action, context.actor(), approvals_required=approvals_required()
        )
        commit_mutation(experiment_id)
        return experiment

    view.__name__ = f"{action}_experiment"
    view.__doc__ = doc
    blp.route(f"/<uuid:experiment_id>/{action}", methods=["POST"])(view)


_transition_view(
    "start",
    "Start a draft or stopped experiment (409 when it needs approval, or its layer lacks room: the message says how much is free).",
)
_transition_view("stop", "Stop a running experiment (assignments are kept; start resumes it).")
_transition_view("archive", "Archive a draft or stopped experiment (terminal).")

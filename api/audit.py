"""Audit log: read the chain, verify it, export its signed checkpoints."""
from __future__ import annotations

import uuid

from celery import Celery
from flask import current_app, url_for
from flask.views import MethodView
from sqlalchemy import func, select

from core.errors import NotFound, Unavailable
from models import AuditCheckpoint, AuditEntry
from services.experiments import audit as audit_service
from services.experiments import audit_checks as service

from . import context, ratelimit
from .auth import require
from .input_guard import Blueprint
from .schemas import (
    AuditCheckpointOutSchema,
    AuditCheckpointQuerySchema,
    AuditEntryOutSchema,
    AuditQuerySchema,
    AuditVerifyJobOutSchema,
    AuditVerifyOutSchema,
    AuditVerifyQuerySchema,
)

blp = Blueprint("audit", __name__, url_prefix="/api/audit", description="Immutable audit log")

VERIFY_TASK = "audit.verify_full"


def _task_client() -> Celery:
    """A producer-only Celery client on the configured broker (built once per app)."""
    client = current_app.extensions.get("audit_task_client")
    if client is None:
        settings = current_app.extensions["settings"]
        client = current_app.extensions["audit_task_client"] = Celery(
            "molam_experiments_api", broker=settings.celery_broker_url, set_as_current=False
        )
    return client


@blp.route("")
class AuditCollection(MethodView):
    @require("audit")
    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, AuditEntryOutSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=500)
    def get(self, query: dict, pagination_parameters):
        """Audit entries, newest first (filter by ``experiment_id``)."""
        statement = select(AuditEntry)
        count = select(func.count()).select_from(AuditEntry)
        if "experiment_id" in query:
            statement = statement.where(AuditEntry.experiment_id == query["experiment_id"])
            count = count.where(AuditEntry.experiment_id == query["experiment_id"])
        session = context.session()
        pagination_parameters.item_count = session.execute(count).scalar_one()
        rows = session.execute(
            statement.order_by(AuditEntry.id.desc())
            .offset(context.page_offset(pagination_parameters))
            .limit(pagination_parameters.page_size)
        )
        return list(rows.scalars())


@blp.route("/verify")
class AuditVerify(MethodView):
    @require("audit")
    @blp.arguments(AuditVerifyQuerySchema, location="query")
    @blp.response(200, AuditVerifyOutSchema)
    @blp.alt_response(202, schema=AuditVerifyJobOutSchema, description="`full=1`: a complete walk queued for the worker")
    def get(self, query: dict):
        """Verify the chain from the newest valid checkpoint to the head; ``?full=1`` queues a
        complete walk (every entry, every checkpoint signature) and answers 202 with its job."""
        ratelimit.spend("audit_verify")
        session = context.session()
        if not query["full"]:
            return service.verify_chain(session, audit_service.current_keys())
        job = service.create_verify_job(session, context.actor().sub)
        session.commit()  # the worker must find the job: enqueue after the commit
        try:
            _task_client().send_task(VERIFY_TASK, args=[str(job.id)])
        except Exception as exc:
            service.fail_verify_job(session, job, f"could not queue the verification: {exc}")
            session.commit()
            raise Unavailable("the task broker is unreachable; the verification was not queued", retry_after=5) from exc
        response = context.json_response(AuditVerifyJobOutSchema().dump(job), status=202)
        response.headers["Location"] = url_for("audit.AuditVerifyJobItem", job_id=job.id)
        return response


@blp.route("/verify/<uuid:job_id>")
class AuditVerifyJobItem(MethodView):
    @require("audit")
    @blp.response(200, AuditVerifyJobOutSchema)
    def get(self, job_id: uuid.UUID):
        """A full verification job: ``queued``, ``running``, ``done`` (with its ``result``) or ``failed``."""
        job = service.get_verify_job(context.session(), job_id)
        if job is None:
            raise NotFound(f"verification job {job_id} not found")
        return job


@blp.route("/checkpoints")
class AuditCheckpoints(MethodView):
    @require("audit_checkpoints")
    @blp.arguments(AuditCheckpointQuerySchema, location="query")
    @blp.response(200, AuditCheckpointOutSchema(many=True))
    @blp.paginate(page_size=100, max_page_size=1000)
    def get(self, query: dict, pagination_parameters):
        """Signed checkpoints of the chain head, oldest first (``after_id``: only newer ones), for
        an auditor to keep outside the platform."""
        session = context.session()
        statement = select(AuditCheckpoint)
        count = select(func.count()).select_from(AuditCheckpoint)
        if "after_id" in query:
            statement = statement.where(AuditCheckpoint.id > query["after_id"])
            count = count.where(AuditCheckpoint.id > query["after_id"])
        pagination_parameters.item_count = session.execute(count).scalar_one()
        rows = session.scalars(
            statement.order_by(AuditCheckpoint.id)
            .offset(context.page_offset(pagination_parameters))
            .limit(pagination_parameters.page_size)
        )
        return [service.checkpoint_document(checkpoint) for checkpoint in rows]

"""Audit log: read and verify the hash chain."""
from __future__ import annotations

from flask.views import MethodView
from sqlalchemy import func, select

from models import AuditEntry
from services.experiments import audit as service

from . import context, ratelimit
from .auth import require
from .input_guard import Blueprint
from .schemas import AuditEntryOutSchema, AuditQuerySchema, AuditVerifyOutSchema

blp = Blueprint("audit", __name__, url_prefix="/api/audit", description="Immutable audit log")


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
    @blp.response(200, AuditVerifyOutSchema)
    def get(self):
        """Walk the whole chain and report the first entry whose hash or link is wrong."""
        ratelimit.spend("audit_verify")
        return service.verify_chain(context.session())

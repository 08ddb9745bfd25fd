"""Export raw data for offline analysis (data science): events or assignments, CSV or NDJSON.

Streams straight from PostgreSQL (``COPY ... TO STDOUT`` for CSV, a server-side
cursor for NDJSON), so memory stays flat whatever the experiment's size.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import marshmallow as ma
from flask import Response, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields, validate

from core import db
from services.experiments import lifecycle as experiment_service

from . import context, ratelimit
from .auth import require

blp = Blueprint("export", __name__, url_prefix="/api/experiments", description="Raw data export")

QUERIES = {
    "events": (
        "SELECT event_id, experiment_id, variant_id, molam_id, event_type, value, currency, amount_minor, metadata, "
        "occurred_at, received_at, recorded_at FROM experiment_metrics WHERE experiment_id = %(id)s ORDER BY id"
    ),
    "assignments": (
        "SELECT a.molam_id, a.variant_id, v.name AS variant_name, v.is_control, a.assigned_at, "
        "a.country, a.lang, a.currency, a.region, a.device, a.txn_count, a.pre_exposure_value "
        "FROM experiment_assignments a JOIN experiment_variants v ON v.id = a.variant_id "
        "WHERE a.experiment_id = %(id)s ORDER BY a.assigned_at, a.molam_id"
    ),
}


class ExportQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    kind = fields.String(load_default="events", validate=validate.OneOf(tuple(QUERIES)))
    format = fields.String(load_default="csv", validate=validate.OneOf(("csv", "ndjson")))


def _csv_stream(sql: str, experiment_id: uuid.UUID) -> Iterator[bytes]:
    connection = db.get_read_engine().raw_connection()
    try:
        cursor = connection.cursor()
        # psycopg binds COPY parameters client-side, so the query may carry %(id)s.
        with cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)", {"id": experiment_id}) as copy:
            for chunk in copy:
                yield bytes(chunk)
        connection.rollback()
    finally:
        connection.close()


def _ndjson_stream(sql: str, experiment_id: uuid.UUID) -> Iterator[bytes]:
    connection = db.get_read_engine().raw_connection()
    try:
        cursor = connection.cursor(name=f"export_{uuid.uuid4().hex}")
        cursor.itersize = 5000
        cursor.execute(sql, {"id": experiment_id})
        names = None
        for row in cursor:
            if names is None:
                names = [c.name for c in cursor.description]
            yield (json.dumps(dict(zip(names, row)), default=str) + "\n").encode()
        connection.rollback()
    finally:
        connection.close()


@blp.route("/<uuid:experiment_id>/export")
class ExperimentExport(MethodView):
    @require("export")
    @blp.arguments(ExportQuerySchema, location="query")
    @blp.response(200, content_type="text/csv")
    @blp.alt_response(200, content_type="application/x-ndjson", success=True)
    def get(self, query: dict, experiment_id: uuid.UUID):
        """Stream the experiment's raw ``events`` (default) or ``assignments`` as CSV or NDJSON."""
        ratelimit.spend("export")
        experiment_service.get_experiment(context.read_session(), experiment_id)
        context.read_session().rollback()
        sql = QUERIES[query["kind"]]
        if query["format"] == "csv":
            body, mimetype = _csv_stream(sql, experiment_id), "text/csv"
        else:
            body, mimetype = _ndjson_stream(sql, experiment_id), "application/x-ndjson"
        filename = f"experiment-{experiment_id}-{query['kind']}.{query['format']}"
        return Response(
            stream_with_context(body),
            mimetype=mimetype,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

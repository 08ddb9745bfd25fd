"""Export raw data for offline analysis (data science): events or assignments, CSV or NDJSON.

Streams straight from PostgreSQL (``COPY ... TO STDOUT`` for CSV, a server-side
cursor for NDJSON), so memory stays flat whatever the experiment's size. CSV is
opened in spreadsheets, so its text cells are neutralised in the query itself: one
starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
``'``. NDJSON carries the values unchanged.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, cast

import marshmallow as ma
import psycopg
from flask import Response, stream_with_context
from flask.views import MethodView
from marshmallow import fields, validate

from core import db
from services.experiments import lifecycle as experiment_service

from . import context, ratelimit
from .auth import require
from .input_guard import Blueprint

blp = Blueprint("export", __name__, url_prefix="/api/experiments", description="Raw data export")

#: Each export: its columns as (SQL expression, name, holds text a client or an operator wrote), then the rest.
EXPORTS: dict[str, tuple[tuple[tuple[str, str, bool], ...], str]] = {
    "events": (
        (
            ("event_id", "event_id", True), ("experiment_id", "experiment_id", False), ("variant_id", "variant_id", False),
            ("molam_id", "molam_id", True), ("event_type", "event_type", True), ("value", "value", False),
            ("currency", "currency", True), ("amount_minor", "amount_minor", False), ("metadata", "metadata", True),
            ("occurred_at", "occurred_at", False), ("received_at", "received_at", False), ("recorded_at", "recorded_at", False),
        ),
        "FROM experiment_metrics WHERE experiment_id = %(id)s ORDER BY id",
    ),
    "assignments": (
        (
            ("a.molam_id", "molam_id", True), ("a.variant_id", "variant_id", False), ("v.name", "variant_name", True),
            ("v.is_control", "is_control", False), ("a.assigned_at", "assigned_at", False), ("a.country", "country", True),
            ("a.lang", "lang", True), ("a.currency", "currency", True), ("a.region", "region", True),
            ("a.device", "device", True), ("a.txn_count", "txn_count", False),
            ("a.pre_exposure_value", "pre_exposure_value", False),
        ),
        "FROM experiment_assignments a JOIN experiment_variants v ON v.id = a.variant_id "
        "WHERE a.experiment_id = %(id)s ORDER BY a.assigned_at, a.molam_id",
    ),
}

#: A spreadsheet runs a cell starting with one of these as a formula (CSV injection);
#: a leading single quote makes it text. Numbers are never touched: -5 stays a number.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_START = "left({0}::text, 1) IN ('=', '+', '-', '@', chr(9), chr(13))"


def export_sql(kind: str, *, spreadsheet_safe: bool) -> str:
    """The export's SELECT; ``spreadsheet_safe`` prefixes the text cells that would start a formula with ``'``."""
    columns, rest = EXPORTS[kind]
    selected = []
    for expression, name, is_text in columns:
        if spreadsheet_safe and is_text:
            expression = (
                f"CASE WHEN {_FORMULA_START.format(expression)} THEN '''' || {expression}::text ELSE {expression}::text END"
            )
        selected.append(f"{expression} AS {name}")
    return f"SELECT {', '.join(selected)} {rest}"


class ExportQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    kind = fields.String(load_default="events", validate=validate.OneOf(tuple(EXPORTS)))
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
        # A server-side (named) cursor: rows arrive 5,000 at a time, never all at once.
        driver = cast("psycopg.Connection[Any]", connection.driver_connection)
        cursor = driver.cursor(name=f"export_{uuid.uuid4().hex}")
        cursor.itersize = 5000
        cursor.execute(sql, {"id": experiment_id})
        names: list[str] | None = None
        for row in cursor:
            if names is None:
                names = [c.name for c in cursor.description or ()]
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
        if query["format"] == "csv":
            body, mimetype = _csv_stream(export_sql(query["kind"], spreadsheet_safe=True), experiment_id), "text/csv"
        else:
            sql = export_sql(query["kind"], spreadsheet_safe=False)
            body, mimetype = _ndjson_stream(sql, experiment_id), "application/x-ndjson"
        filename = f"experiment-{experiment_id}-{query['kind']}.{query['format']}"
        return Response(
            stream_with_context(body),
            mimetype=mimetype,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

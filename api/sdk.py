"""SDK resource: the definitions clients evaluate locally, and a stream of their changes."""
from __future__ import annotations

from flask import Flask, Response, current_app, g, request

from core.config import Settings
from core.errors import Unavailable
from core.redis import get_redis
from services.sdk import definitions as snapshots
from services.sdk import stream as change_stream

from . import context
from .auth import require
from .input_guard import Blueprint

blp = Blueprint(
    "sdk",
    __name__,
    url_prefix="/api/sdk",
    description="Evaluation data for client SDKs (local evaluation of fixed splits) and its change stream",
)

# Clients reconnect this long after a stream ends or breaks (the SSE ``retry`` field).
RECONNECT_MS = 1_000


def init_sdk(app: Flask, settings: Settings) -> None:
    """One change watcher and one stream cap per application (per process under gunicorn)."""
    app.extensions["sdk_watcher"] = change_stream.ChangeWatcher(lambda: get_redis(settings.redis_url))
    app.extensions["sdk_stream_slots"] = change_stream.StreamSlots(settings.sdk_stream_slots)


@blp.route("/definitions", methods=["GET"])
@require("sdk_definitions")
@blp.doc(
    responses={
        "200": {
            "description": "Every running experiment the caller may assign (allowed_services), its evaluation data "
            "(see docs/sdk.md); strong ETag per view"
        },
        "304": {"description": "If-None-Match matched the current ETag"},
    }
)
def definitions():
    """Every running experiment's evaluation data, with a strong ETag (If-None-Match → 304)."""
    snapshot = snapshots.caller_view(snapshots.current_snapshot(context.redis_client()), g.principal.roles)
    headers = {"ETag": snapshot.header_etag, "Cache-Control": "no-cache"}
    if request.if_none_match.contains_weak(snapshot.etag):
        return Response(status=304, headers=headers)
    return Response(snapshot.body, status=200, mimetype="application/json", headers=headers)


@blp.route("/stream", methods=["GET"])
@require("sdk_definitions")
@blp.doc(
    responses={
        "200": {
            "description": (
                "text/event-stream: `definitions` events `{etag}` (first one at once when the client's "
                "Last-Event-ID / If-None-Match differs), `:` heartbeats, a final `reconnect`"
            )
        },
        "503": {"description": "This process has no free stream slot (Retry-After); poll /definitions meanwhile"},
    }
)
def stream():
    """Server-sent events: one `definitions` event with the new ETag per change."""
    settings: Settings = current_app.extensions["settings"]
    slots: change_stream.StreamSlots = current_app.extensions["sdk_stream_slots"]
    if not slots.try_acquire():
        raise Unavailable(
            f"all {slots.limit} change-stream slot(s) of this server process are taken; "
            "poll GET /api/sdk/definitions with If-None-Match and retry",
            retry_after=5,
        )
    known = request.headers.get("Last-Event-ID") or request.headers.get("If-None-Match")
    if known:
        known = known.strip()
        known = known if known.startswith('"') else f'"{known}"'
    client = context.redis_client()
    roles = g.principal.roles
    body = change_stream.events(
        current_app.extensions["sdk_watcher"],
        lambda: snapshots.caller_view(snapshots.current_snapshot(client), roles).header_etag,
        known_etag=known,
        max_seconds=settings.sdk_stream_max_seconds,
        heartbeat_s=settings.sdk_stream_heartbeat_s,
        retry_ms=RECONNECT_MS,
    )
    response = Response(
        body, status=200, mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # Released when the server closes the response, whether or not the body ever started.
    response.call_on_close(slots.release)
    return response

"""Per-request plumbing: the database session, the actor, the Redis client."""
from __future__ import annotations

import json

import orjson
import redis
from flask import Response, current_app, g, request
from sqlalchemy.orm import Session

from core import db
from core.redis import get_redis
from services.experiments.audit import Actor


def session() -> Session:
    if "db_session" not in g:
        g.db_session = db.new_session()
    return g.db_session


def read_session() -> Session:
    """Reads that tolerate replication lag (results, insights, exports, reports): the replica when set."""
    if "db_read_session" not in g:
        g.db_read_session = db.new_read_session()
    return g.db_read_session


def close_session(exc: BaseException | None = None) -> None:
    for key in ("db_session", "db_read_session"):
        current = g.pop(key, None)
        if current is not None:
            if exc is not None:
                current.rollback()
            current.close()


def redis_client() -> redis.Redis:
    return get_redis(current_app.extensions["settings"].redis_url)


def request_id() -> str:
    if "request_id" not in g:
        from .observability import incoming_request_id

        g.request_id = incoming_request_id(request.headers.get("X-Request-ID"))
    return g.request_id


def actor() -> Actor:
    principal = g.principal
    return Actor(sub=principal.sub, roles=principal.roles, request_id=request_id(), client_ip=request.remote_addr)


# PostgreSQL's OFFSET is a bigint; any page past the last row is empty anyway.
_MAX_OFFSET = 2**62


def page_offset(pagination_parameters) -> int:
    """The row offset of the requested page, clamped so an absurd ``page`` is an empty page, not a 500."""
    return min(pagination_parameters.first_item, _MAX_OFFSET)


def json_response(payload: object, status: int = 200) -> Response:
    """A JSON response encoded by orjson (several times faster than the stdlib on the hot paths).

    orjson refuses what the stdlib accepts in two corners (integers beyond 64 bits in a
    variant's config, lone surrogates in client strings): those take the stdlib.
    """
    try:
        body = orjson.dumps(payload)
    except TypeError:
        body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status=status, mimetype="application/json")

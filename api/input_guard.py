"""The request guard: no client bytes reach a schema, a service or PostgreSQL unchecked.

* JSON bodies are decoded once per request by :func:`request_json` with
  :func:`core.jsonsafe.loads`: at most :data:`~core.jsonsafe.MAX_DEPTH` levels, no NaN
  or Infinity, no NUL or unpaired surrogate in any key or string. Every reader of a
  body goes through it: webargs (the :class:`Blueprint` below carries a parser that
  asks it instead of decoding again) and the hand-written readers of ``track``, the
  event batch and the exposure batch.
* Path and query parameters are checked for NUL before any view runs (percent-decoding
  cannot produce a surrogate: Werkzeug replaces invalid UTF-8).

A body that is not JSON is a 400; a JSON body holding something refused, or a URL
parameter with NUL, is a 422 whose ``errors`` nest like marshmallow's
(``{"json": {"variants": {"0": {"config": [...]}}}}``) and whose message gives the
dotted path (``variants.0.config.colour``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask_smorest
from flask import Flask, g, request
from webargs import core as webargs_core
from webargs.flaskparser import FlaskParser

from core import jsonsafe
from core.errors import DomainError, Invalid

_UNSET = object()

#: The guarantees, as the OpenAPI document's description states them.
OPENAPI_DESCRIPTION = (
    "Input limits, on every operation: a body that is not UTF-8 JSON is a 400. A JSON body is a 422 naming "
    f"the path when it nests deeper than {jsonsafe.MAX_DEPTH} levels, holds NaN, Infinity or a number too "
    "large for a double, or a key or string with NUL (U+0000) or an unpaired surrogate. NUL in a path or "
    "query parameter is a 422 naming it. Errors: {code, status, message, errors}."
)


class MalformedBody(DomainError):
    """The body is not a JSON document at all."""

    status = 400


def _nest(errors: dict[str, Any], path: jsonsafe.Path, message: str) -> None:
    node = errors
    parts = [jsonsafe.printable_key(p) if isinstance(p, str) else str(p) for p in path] or ["_schema"]
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    leaf = node.setdefault(parts[-1], [])
    if isinstance(leaf, list):
        leaf.append(message)


def rejection(problems: list[tuple[jsonsafe.Path, str]], location: str = "json") -> Invalid:
    """The 422 for refused content: nested errors plus the dotted paths in the message."""
    errors: dict[str, Any] = {}
    for path, message in problems:
        _nest(errors, path, message)
    summary = "; ".join(f"{jsonsafe.dotted(path) or 'body'}: {message}" for path, message in problems[:3])
    if len(problems) > 3:
        summary += f"; and {len(problems) - 3} more"
    return Invalid(f"invalid request: {summary}", errors={location: errors})


def request_json(*, exact_decimals: bool = False) -> Any:
    """The request's JSON body, decoded and checked once (cached for the request).

    ``exact_decimals``: fractional numbers are :class:`core.money.DecimalLiteral` (the
    ingestion endpoints, for exact money). The first reader decides; a request has one body.
    """
    cached = g.get("guarded_json", _UNSET)
    if cached is not _UNSET:
        return cached
    data = request.get_data(cache=True)
    if not data:
        raise MalformedBody("the request body must be JSON", errors={"json": {"_schema": ["missing JSON body"]}})
    try:
        value = jsonsafe.loads(data, exact_decimals=exact_decimals)
    except jsonsafe.NotJSON as exc:
        raise MalformedBody(f"the request body is not JSON: {exc}", errors={"json": {"_schema": ["invalid JSON body"]}}) from None
    except jsonsafe.Rejected as exc:
        raise rejection(exc.problems) from None
    g.guarded_json = value
    return value


#: A hand-written twin of a body schema: returns exactly what the schema's ``load`` would,
#: or ``None`` for anything it does not accept outright (the schema then decides, and
#: writes the 422). Registered with :meth:`GuardedParser.register_fast_reader`.
FastReader = Callable[[Any], Any]


class GuardedParser(FlaskParser):
    """webargs' Flask parser reading the body through :func:`request_json` (no second decode).

    A hot endpoint's schema may have a fast reader: a valid body is then read without
    marshmallow; every other body goes through the schema as before, so a refused
    request gets the schema's own 422, field names and messages included.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast_readers: dict[int, tuple[object, FastReader]] = {}

    def register_fast_reader(self, schema: object, reader: FastReader) -> None:
        """Read JSON bodies parsed with this schema instance through ``reader`` first."""
        self._fast_readers[id(schema)] = (schema, reader)

    def parse(self, argmap: Any, req: Any = None, *, location: str | None = None, **kwargs: Any) -> Any:
        registered = self._fast_readers.get(id(argmap))
        if registered is not None and registered[0] is argmap and (location or self.location) == "json":
            if (req if req is not None else request).is_json:
                loaded = registered[1](request_json())
                if loaded is not None:
                    return loaded
        return super().parse(argmap, req, location=location, **kwargs)

    def _raw_load_json(self, req: Any) -> Any:
        if not req.is_json:
            return webargs_core.missing
        return request_json()


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint whose ``@arguments`` read bodies through the guard.

    Every API blueprint is one of these (a test checks it).
    """

    ARGUMENTS_PARSER = GuardedParser()


def _check_url() -> None:
    """Path and query parameters with NUL are refused before the view (PostgreSQL cannot store them)."""
    if request.url_rule is None:
        return
    if "\x00" in request.path and request.view_args:
        names = [name for name, value in request.view_args.items() if isinstance(value, str) and "\x00" in value]
        if names:
            raise rejection([((name,), jsonsafe.NUL_MESSAGE) for name in names], "path")
    query = request.query_string
    if b"%00" in query or b"\x00" in query:
        problems: list[tuple[jsonsafe.Path, str]] = []
        for name, values in request.args.lists():
            if "\x00" in name:
                problems.append(((name,), f"is a parameter name that {jsonsafe.NUL_MESSAGE}"))
            elif any("\x00" in value for value in values):
                problems.append(((name,), jsonsafe.NUL_MESSAGE))
        if problems:
            raise rejection(problems, "query")


def init_input_guard(app: Flask) -> None:
    app.before_request(_check_url)

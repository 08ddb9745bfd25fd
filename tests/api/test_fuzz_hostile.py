"""The bounded, deterministic fuzz profile of ``make test``: hostile input on every operation.

Built from the served OpenAPI document, so a new operation is covered the day it is
added. For every operation with a JSON body: each hostile value of
:mod:`tests.support.hostile` at each documented property (and at each property of
the first item of a list of objects, such as ``variants.0.config``), plus bodies that
are not JSON. For every operation: NUL in each query parameter and string path
parameter. Each answer must be the 400 or 422 envelope naming the field, and at the
end nothing may have been stored anywhere. ``make fuzz`` runs the same values through
schemathesis against a running platform (``tests/support/fuzz_hooks.py``).
"""
from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from core import jsonsafe
from core.config import libpq_url
from core.redis import get_redis
from models import Base
from services.ingestion import staging as ingestion
from tests.support.hostile import HOSTILE_BODIES, HOSTILE_VALUES, body_with, error_paths

ALL_ROLES = ["ops_admin", "marketing", "data_science", "pay_module"]


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def json_body_schema(spec: dict, operation: dict) -> dict | None:
    content = (operation.get("requestBody") or {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return resolve(spec, schema) if schema else None


def property_paths(spec: dict, schema: dict) -> list[tuple[str | int, ...]]:
    """Each top-level property, and each property of the first item of a list of objects."""
    paths: list[tuple[str | int, ...]] = []
    for name, definition in schema.get("properties", {}).items():
        paths.append((name,))
        items = resolve(spec, definition.get("items", {})) if definition.get("type") == "array" else {}
        paths.extend((name, 0, inner) for inner in items.get("properties", {}))
    return paths


def all_rows(settings) -> dict[str, int]:
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        counts = {t.name: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0] for t in Base.metadata.sorted_tables}
    counts["redis:stream"] = get_redis(settings.redis_url).xlen(ingestion.STREAM_KEY)
    return counts


def named(errors: Any, field: str) -> bool:
    """``errors`` (marshmallow-shaped) name ``field`` or something inside it."""
    return any(path == field or path.startswith(field + ".") or not field for path in error_paths(errors))


@pytest.fixture
def target(create_experiment, settings):
    """A draft experiment the path parameters point at: hostile bodies must not touch it."""
    experiment = create_experiment()
    return {"experiment_id": experiment["id"], "variant_id": experiment["variants"][0]["id"], "molam_id": "u1"}


def fill(path: str, parameters: list[dict], target: dict[str, str]) -> str:
    for parameter in parameters:
        if parameter["in"] == "path":
            name = parameter["name"]
            path = path.replace("{" + name + "}", target.get(name, str(uuid.uuid4())))
    return path


def operations(spec: dict) -> list[tuple[str, str, dict, list[dict]]]:
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                found.append((method.upper(), path, operation, operation.get("parameters", []) + item.get("parameters", [])))
    return found


def test_hostile_input_on_every_operation_is_refused_and_stores_nothing(client, make_token, settings, target):
    spec = client.get("/openapi.json").get_json()
    headers = {"Authorization": f"Bearer {make_token(ALL_ROLES, sub='fuzzer')}"}
    before = all_rows(settings)
    failures: list[str] = []
    checked = 0

    def check(method: str, url: str, raw: bytes | None, expected: set[int], location: str, field: str) -> None:
        nonlocal checked
        checked += 1
        extra = {"data": raw, "content_type": "application/json"} if raw is not None else {}
        response = client.open(url, method=method, headers=headers, **extra)
        body = response.get_json(silent=True) or {}
        problem = None
        if response.status_code not in expected:
            problem = f"status {response.status_code}"
        elif body.get("code") != response.status_code or not isinstance(body.get("message"), str):
            problem = "not the error envelope"
        elif field and not named(body.get("errors", {}).get(location), field):
            problem = f"errors do not name {field}: {body.get('errors')}"
        if problem:
            failures.append(f"{method} {url} {location}:{field or '-'} ({raw[:60] if raw else ''!r}): {problem}")

    json_operations = 0
    for method, path, operation, parameters in operations(spec):
        url = fill(path, parameters, target)
        schema = json_body_schema(spec, operation)
        if schema is not None:
            json_operations += 1
            for raw, status in HOSTILE_BODIES.values():
                check(method, url, raw, {status}, "json", "")
            for place in property_paths(spec, schema):
                for name in HOSTILE_VALUES:
                    check(method, url, body_with({}, place, name), {422}, "json", jsonsafe.dotted(place))
        for parameter in parameters:
            if parameter["in"] == "query":
                check(method, f"{url}?{parameter['name']}=a%00b", None, {422}, "query", parameter["name"])
            elif parameter["in"] == "path" and parameter.get("schema", {}).get("type") == "string" \
                    and "format" not in parameter.get("schema", {}):
                bad = path.replace("{" + parameter["name"] + "}", "a%00b")
                check(method, fill(bad, parameters, target), None, {422}, "path", parameter["name"])

    assert json_operations >= 15 and checked > 1000, (json_operations, checked)
    assert not failures, f"{len(failures)} of {checked} cases:\n" + "\n".join(failures[:40])
    assert all_rows(settings) == before

"""The assign body's fast reader agrees with its schema, and refused bodies keep the schema's 422."""
from __future__ import annotations

import itertools
import json
from typing import Any

import marshmallow as ma
import pytest

from api.assignments import ASSIGN_REQUEST, AssignRequestSchema, read_assign_body
from api.input_guard import Blueprint
from core.codes import COUNTRIES, CURRENCIES, LANGUAGES

COUNTRY, LANG, CURRENCY = sorted(COUNTRIES)[0], sorted(LANGUAGES)[0], sorted(CURRENCIES)[0]

#: Each field's values: accepted ones, refused ones and ones the schema converts.
VALUES: dict[str, list[Any]] = {
    "molam_id": ["u1", "x" * 200, "", "x" * 201, None, 7, True, ["u1"], {"a": 1}, "é" * 200, "é" * 201],
    "country": [COUNTRY, COUNTRY.lower(), "ZZ", "", None, 1, [COUNTRY]],
    "lang": [LANG, LANG.upper(), "zz", "", None, False],
    "currency": [CURRENCY, CURRENCY.lower(), "ZZZ", None, 3.5],
    "region": ["dakar", "r" * 64, "r" * 65, "", None, 12],
    "device": ["ios", "d" * 32, "d" * 33, "", None, {}],
    "txn_count": [0, 5, 2**31 - 1, 2**31, -1, 1.0, 2.5, "3", True, False, None, 10**30],
    "pre_exposure_value": [0, 12.5, -3, 1e15, -1e15, 1e15 + 1, 10**15, 10**15 + 1, "12.5", "abc", True, None, 2.0**60, 10**400],
}


def schema_load(body: object) -> Any:
    """What the schema decides: the loaded context, or the marshmallow error messages."""
    try:
        return ASSIGN_REQUEST.load(body)
    except ma.ValidationError as exc:
        return ("refused", exc.messages)


def bodies() -> list[object]:
    out: list[object] = [{}, [], "u1", 3, None, {"molam_id": "u1", "colour": "blue"}, {"MOLAM_ID": "u1"}]
    for name, values in VALUES.items():
        for value in values:
            body = {"molam_id": "u1", name: value} if name != "molam_id" else {name: value}
            out.append(body)
            out.append({**body, "country": COUNTRY, "lang": LANG, "currency": CURRENCY, "device": "ios"} if name not in
                       ("country", "lang", "currency", "device") else {**body, "molam_id": "u2", "region": "r"})
    for country, txn_count, pre in itertools.product(VALUES["country"][:3], VALUES["txn_count"][:6], VALUES["pre_exposure_value"][:6]):
        out.append({"molam_id": "u3", "country": country, "txn_count": txn_count, "pre_exposure_value": pre})
    out.append({name: values[0] for name, values in VALUES.items()})
    return out


@pytest.mark.parametrize("body", bodies(), ids=lambda body: json.dumps(body, default=str)[:80])
def test_fast_reader_accepts_only_what_the_schema_accepts_with_the_same_values(body: object) -> None:
    fast = read_assign_body(body)
    decided = schema_load(body)
    if fast is None:
        # Not accepted outright: the schema decides (refuses, or converts e.g. "12.5").
        return
    assert fast == decided, body
    assert type(fast.pre_exposure_value) is type(decided.pre_exposure_value)


def test_the_matrix_exercises_both_outcomes() -> None:
    verdicts = [(read_assign_body(b) is not None, isinstance(schema_load(b), tuple)) for b in bodies()]
    assert any(fast for fast, _ in verdicts) and any(refused for _, refused in verdicts)
    # The reader only leaves the schema the bodies it refuses or converts: every body the
    # schema takes as it is, the reader takes too.
    converted = {"txn_count", "pre_exposure_value"}
    for body in bodies():
        decided = schema_load(body)
        if isinstance(body, dict) and not isinstance(decided, tuple) and not converted & body.keys():
            assert read_assign_body(body) == decided, body


def test_limits_are_the_schemas() -> None:
    fields = AssignRequestSchema._declared_fields
    assert set(fields) == {"molam_id", "country", "lang", "currency", "region", "device", "txn_count", "pre_exposure_value"}
    assert Blueprint.ARGUMENTS_PARSER._fast_readers[id(ASSIGN_REQUEST)] == (ASSIGN_REQUEST, read_assign_body)


BAD_BODIES = [
    {},
    {"molam_id": ""},
    {"molam_id": None},
    {"molam_id": 7},
    {"molam_id": "u1", "country": "sn"},
    {"molam_id": "u1", "country": "ZZ", "lang": "FR"},
    {"molam_id": "u1", "currency": None},
    {"molam_id": "u1", "region": "r" * 65, "device": ""},
    {"molam_id": "u1", "txn_count": 2.5},
    {"molam_id": "u1", "txn_count": True},
    {"molam_id": "u1", "txn_count": -1},
    {"molam_id": "u1", "pre_exposure_value": "abc"},
    {"molam_id": "u1", "pre_exposure_value": 1e16},
    {"molam_id": "u1", "colour": "blue"},
    [],
    "u1",
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=lambda body: json.dumps(body)[:60])
def test_refused_bodies_get_the_schemas_422(client, auth, create_experiment, body: object) -> None:
    experiment = create_experiment(start=True, targeting={})
    response = client.post(f"/api/experiments/{experiment['id']}/assign", json=body, headers=auth("checkout_module"))
    assert response.status_code == 422
    payload = response.get_json()
    messages = schema_load(body)
    assert isinstance(messages, tuple), body
    assert payload["errors"] == {"json": messages[1]}
    fields = sorted(messages[1]) if isinstance(messages[1], dict) else []
    assert payload["message"] == f"invalid request: {', '.join(fields)}"


def test_a_converted_value_still_reaches_the_service(client, auth, create_experiment) -> None:
    experiment = create_experiment(start=True, targeting={})
    body = {"molam_id": "u-conv", "pre_exposure_value": "12.5"}
    assert read_assign_body(body) is None
    response = client.post(f"/api/experiments/{experiment['id']}/assign", json=body, headers=auth("checkout_module"))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["eligible"] is True

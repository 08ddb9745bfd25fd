"""Hostile client bytes: too deep, NaN/Infinity, NUL, unpaired surrogates, in bodies, paths and queries.

Every case is a 400 or 422 in the standard envelope naming the field, and nothing is
stored: rows are counted in PostgreSQL and the ingestion stream's length in Redis.
"""
from __future__ import annotations

import json
import math

import marshmallow as ma
import psycopg
import pytest

from api.schemas import VariantInSchema
from core import jsonsafe
from core.config import libpq_url
from core.redis import get_redis
from services.ingestion import records
from services.ingestion import staging as ingestion
from tests.support.api import experiment_body
from tests.support.hostile import body_with, error_paths
from tests.support.ingestion import assign_users, drain_all

SERVICE = "pay_module"
STORED_TABLES = (
    "experiments", "experiment_variants", "experiment_assignments", "experiment_metrics",
    "experiment_metric_dead_letters", "experiment_audit_logs",
)


def stored(settings) -> dict[str, int]:
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in STORED_TABLES}
    counts["stream"] = get_redis(settings.redis_url).xlen(ingestion.STREAM_KEY)
    return counts


def post_raw(client, path: str, raw: bytes, headers: dict) -> object:
    return client.post(path, data=raw, headers={**headers, "Content-Type": "application/json"})


def assert_refused(response, status: int, location: str, field: str) -> None:
    """The envelope, the status, and ``field`` named in both ``errors`` and the message."""
    body = response.get_json()
    assert response.status_code == status, body
    assert body["code"] == status and isinstance(body["status"], str)
    paths = error_paths(body["errors"][location])
    assert any(path == field or path.startswith(field + ".") for path in paths), (field, paths)
    assert field in body["message"], body["message"]


# --------------------------------------------------------------------------- experiments

CREATE_CASES = [
    # (where the hostile value goes, which hostile value, the field the error must name)
    (("variants", 0, "config", "button_color"), "deep_list", "variants.0.config.button_color"),
    (("variants", 0, "config"), "deep_object", "variants.0.config"),
    (("variants", 0, "config", "button_color"), "nan", "variants.0.config.button_color"),
    (("variants", 1, "config", "button_color"), "infinity", "variants.1.config.button_color"),
    (("variants", 0, "config", "button_color"), "negative_infinity", "variants.0.config.button_color"),
    (("variants", 0, "config", "button_color"), "overflow", "variants.0.config.button_color"),
    (("variants", 0, "config", "button_color"), "nul", "variants.0.config.button_color"),
    (("variants", 0, "config", "nested"), "nul_key", "variants.0.config.nested"),
    (("variants", 0, "config", "nested"), "nested_nul", "variants.0.config.nested.0.a.0"),
    (("variants", 0, "config", "button_color"), "surrogate", "variants.0.config.button_color"),
    (("variants", 0, "name"), "nul", "variants.0.name"),
    (("name",), "nul", "name"),
    (("description",), "nul", "description"),
    (("name",), "surrogate", "name"),
    (("description",), "low_surrogate", "description"),
    (("targeting", "region"), "surrogate", "targeting.region"),
    (("coverage",), "nan", "coverage"),
    (("fail_fast", "threshold"), "infinity", "fail_fast.threshold"),
]


@pytest.mark.parametrize(("path", "hostile", "field"), CREATE_CASES, ids=[f"{c[2]}-{c[1]}" for c in CREATE_CASES])
def test_create_refuses_hostile_values_and_stores_nothing(client, auth, settings, path, hostile, field):
    response = post_raw(client, "/api/experiments", body_with(experiment_body(), path, hostile), auth())
    assert_refused(response, 422, "json", field)
    assert set(stored(settings).values()) == {0}


def test_a_nul_key_is_named_by_its_escape(client, auth, settings):
    raw = json.dumps(experiment_body()).replace('"button_color": "blue"', '"colour\\u0000": "blue"').encode()
    response = post_raw(client, "/api/experiments", raw, auth())
    assert_refused(response, 422, "json", "variants.0.config.colour\\u0000")
    assert set(stored(settings).values()) == {0}


def test_update_refuses_hostile_values_and_changes_nothing(client, auth, settings, create_experiment):
    experiment = create_experiment()
    before = stored(settings)
    for path, hostile, field in [(("name",), "nul", "name"), (("description",), "surrogate", "description"),
                                 (("variants",), "deep_list", "variants")]:
        raw = body_with({"name": "renamed", "description": "x"}, path, hostile)
        response = client.patch(
            f"/api/experiments/{experiment['id']}", data=raw, headers={**auth(), "Content-Type": "application/json"}
        )
        assert_refused(response, 422, "json", field)
    assert stored(settings) == before
    again = client.get(f"/api/experiments/{experiment['id']}", headers=auth()).get_json()
    assert (again["name"], again["version"]) == (experiment["name"], experiment["version"])


def test_bodies_that_are_not_json_are_a_400(client, auth, settings):
    for raw in (b'{"name": ', b'{"name": "\xff"}', b"\xef\xbb\xbf{}", b"1" * 5000):
        response = post_raw(client, "/api/experiments", raw, auth())
        body = response.get_json()
        assert response.status_code == 400, (raw[:20], body)
        assert body["code"] == 400 and body["errors"]["json"]["_schema"]
    assert set(stored(settings).values()) == {0}


def test_legitimate_unicode_and_escaped_text_are_kept(client, auth):
    """A surrogate *pair* is one character, and a literal backslash-u0000 is six: both are storable."""
    raw = json.dumps(experiment_body(name="Checkout \U0001f600", description="a \\u0000 b")).encode()
    response = post_raw(client, "/api/experiments", raw, auth())
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["name"] == "Checkout \U0001f600"
    assert response.get_json()["description"] == "a \\u0000 b"


def test_nesting_up_to_the_limit_is_accepted(client, auth):
    # body (1) > variants (2) > variant (3) > config (4) > ... : the config may nest 60 more levels.
    config: object = 1
    for _ in range(jsonsafe.MAX_DEPTH - 3):
        config = {"k": config}
    body = experiment_body()
    body["variants"][0]["config"] = {"k": config}
    assert client.post("/api/experiments", json=body, headers=auth()).status_code == 422
    body["variants"][0]["config"] = config
    assert client.post("/api/experiments", json=body, headers=auth()).status_code == 201


def test_the_config_schema_refuses_what_postgresql_refuses():
    schema = VariantInSchema()
    for config, where in [({"a": math.nan}, "a"), ({"a": [math.inf]}, "a.0"), ({"a\x00": 1}, "a\\u0000"),
                          ({"a": "\ud800"}, "a")]:
        with pytest.raises(ma.ValidationError) as caught:
            schema.load({"name": "v", "config": config, "traffic_share": 50})
        assert where in " ".join(caught.value.messages["config"])


# --------------------------------------------------------------------------- assign, track, batches


@pytest.fixture
def running(create_experiment, settings):
    experiment = create_experiment(start=True, targeting={})
    assign_users(settings, experiment, ["u1"])
    return experiment


ASSIGN_CASES = [
    (("molam_id",), "nul", "molam_id"),
    (("molam_id",), "surrogate", "molam_id"),
    (("molam_id",), "deep_list", "molam_id"),
    (("region",), "nul", "region"),
    (("device",), "surrogate_key", "device"),
    (("pre_exposure_value",), "nan", "pre_exposure_value"),
    (("pre_exposure_value",), "overflow", "pre_exposure_value"),
]


@pytest.mark.parametrize(("path", "hostile", "field"), ASSIGN_CASES, ids=[f"{c[2]}-{c[1]}" for c in ASSIGN_CASES])
def test_assign_refuses_hostile_values_and_stores_nothing(client, auth, settings, running, path, hostile, field):
    before = stored(settings)
    raw = body_with({"molam_id": "new-user", "country": "SN"}, path, hostile)
    response = post_raw(client, f"/api/experiments/{running['id']}/assign", raw, auth(SERVICE))
    assert_refused(response, 422, "json", field)
    assert stored(settings) == before


TRACK_CASES = [
    (("molam_id",), "nul", "molam_id"),
    (("molam_id",), "surrogate", "molam_id"),
    (("event_id",), "low_surrogate", "event_id"),
    (("metadata", "page"), "nan", "metadata.page"),
    (("metadata", "page"), "infinity", "metadata.page"),
    (("metadata", "page"), "nul", "metadata.page"),
    (("metadata", "page"), "surrogate", "metadata.page"),
    (("metadata", "page"), "nul_key", "metadata.page"),
    (("metadata",), "deep_object", "metadata"),
    (("value",), "nan", "value"),
]


@pytest.mark.parametrize(("path", "hostile", "field"), TRACK_CASES, ids=[f"{c[2]}-{c[1]}" for c in TRACK_CASES])
def test_track_refuses_hostile_values_and_queues_nothing(client, auth, settings, running, path, hostile, field):
    before = stored(settings)
    event = {"molam_id": "u1", "event_type": "click", "metadata": {"page": "checkout"}}
    response = post_raw(client, f"/api/experiments/{running['id']}/track", body_with(event, path, hostile), auth(SERVICE))
    assert_refused(response, 422, "json", field)
    assert stored(settings) == before


def test_event_batch_with_one_hostile_event_is_refused_whole(client, auth, settings, running):
    events = [{"experiment_id": running["id"], "molam_id": "u1", "event_type": "click", "metadata": {"n": 1}}] * 3
    for hostile in ("nan", "nul", "surrogate"):
        response = post_raw(client, "/api/events/batch", body_with({"events": events}, ("events", 1, "metadata", "n"), hostile),
                            auth(SERVICE))
        assert_refused(response, 422, "json", "events.1.metadata.n")
    assert stored(settings)["stream"] == 0
    drain_all(get_redis(settings.redis_url))
    assert stored(settings)["experiment_metrics"] == 0 and stored(settings)["experiment_metric_dead_letters"] == 0


def test_exposure_batch_refuses_hostile_values(client, auth, settings, running):
    before = stored(settings)
    exposure = {"experiment_id": running["id"], "variant_id": running["variants"][0]["id"], "molam_id": "sdk-user",
                "evaluated_at": "2026-12-01T00:00:00+00:00"}
    for hostile in ("nul", "surrogate"):
        raw = body_with({"exposures": [exposure]}, ("exposures", 0, "molam_id"), hostile)
        assert_refused(post_raw(client, "/api/assignments/batch", raw, auth(SERVICE)), 422, "json", "exposures.0.molam_id")
    assert stored(settings) == before


# --------------------------------------------------------------------------- paths and queries


def test_nul_in_path_and_query_parameters(client, auth, settings, running):
    before = stored(settings)
    response = client.get(f"/api/experiments/{running['id']}/assignment/a%00b", headers=auth(SERVICE))
    assert_refused(response, 422, "path", "molam_id")
    for name in ("q", "created_by", "status"):
        assert_refused(client.get(f"/api/experiments?{name}=x%00y", headers=auth()), 422, "query", name)
    response = client.get(f"/api/experiments/{running['id']}/export?kind=events%00", headers=auth())
    assert_refused(response, 422, "query", "kind")
    assert stored(settings) == before


def test_percent_encoded_surrogates_never_reach_the_database(client, auth, running):
    # %ED%A0%80 is a surrogate's UTF-8 form, which is invalid UTF-8: it decodes to U+FFFD.
    response = client.get(f"/api/experiments/{running['id']}/assignment/a%ED%A0%80", headers=auth(SERVICE))
    assert response.status_code == 404
    assert client.get("/api/experiments?q=%ED%A0%80", headers=auth()).status_code == 200


# --------------------------------------------------------------------------- the staged-event contract


@pytest.mark.parametrize("metadata", [{"a": math.nan}, {"a": [math.inf]}, {"a": "\x00"}, {"\x00": 1}, {"a": "\udc00"}])
def test_the_record_contract_refuses_unstorable_metadata(metadata):
    _, problem = records.serialise_metadata(metadata)
    assert problem is not None


def test_a_literal_backslash_u0000_in_metadata_is_kept():
    encoded, problem = records.serialise_metadata({"a": "\\u0000"})
    assert problem is None and json.loads(encoded) == {"a": "\\u0000"}


@pytest.mark.parametrize("metadata", ['{"a":NaN}', '{"a":-Infinity}', '{"a":"\\u0000"}', '{"a":"\\ud800"}', '{"a":"\ud800"}', "[1]"])
def test_the_writer_refuses_unstorable_metadata_record_by_record(metadata):
    good = records.StagedEvent(
        "e1", "0b5f7d6a-94a4-4bb0-9d55-3d1c8d7a9c11", "7d1c1bb7-54d8-4c39-a5e6-36a4c8b2f7e0", "u1", "click", None, None,
        '{"page":"checkout"}', "2026-12-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00",
    )
    assert records.coerce_record(list(good)) == good
    with pytest.raises(ValueError, match="metadata"):
        records.coerce_record(list(good._replace(metadata=metadata)))


def test_a_hostile_record_in_the_stream_is_dead_lettered_alone(client, settings, running, caplog):
    """A manual XADD with NaN metadata: refused when decoded, so its neighbour's COPY never fails."""
    redis = get_redis(settings.redis_url)
    variant = stored_variant(settings, running["id"])
    rows = [
        [f"e{i}", running["id"], variant, "u1", "click", None, None, metadata,
         "2026-12-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00", None]
        for i, metadata in enumerate(['{"page":"a"}', '{"page":NaN}'])
    ]
    redis.xadd(ingestion.STREAM_KEY, {"n": len(rows), "e": json.dumps(rows), "r": "req-hostile"})
    with caplog.at_level("WARNING", logger="services.ingestion.writer"):
        drain_all(redis)
    counts = stored(settings)
    assert (counts["experiment_metrics"], counts["experiment_metric_dead_letters"], counts["stream"]) == (1, 1, 0)
    assert not [r for r in caplog.records if "isolating the poison" in r.getMessage()]
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        event_id, error = conn.execute("SELECT event_id, error FROM experiment_metric_dead_letters").fetchone()
    assert event_id == "e1" and error.startswith("metadata")


def stored_variant(settings, experiment_id: str) -> str:
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        return str(conn.execute(
            "SELECT variant_id FROM experiment_assignments WHERE experiment_id = %s AND molam_id = 'u1'", (experiment_id,)
        ).fetchone()[0])


def test_escaped_backslashes_never_hide_or_invent_a_problem():
    """``\\\\`` is one backslash: it must neither pair two surrogate escapes nor turn text into NUL."""
    for raw, problem in [
        (rb'{"a": "\ud800\\\udc00"}', True),  # high, backslash, low: two lone surrogates
        (rb'{"a": "\\ud800\\u0000"}', False),  # the text \ud800\u0000, no escape at all
        (rb'{"a": "\ud83d\ude00"}', False),  # a pair: one emoji
        (rb'{"a": "\\\u0000"}', True),  # a backslash, then NUL
    ]:
        try:
            jsonsafe.loads(raw)
            refused = False
        except jsonsafe.Rejected:
            refused = True
        assert refused is problem, raw


def test_brackets_inside_strings_do_not_change_the_depth():
    shallow = b'{"a": "' + b"[" * 200 + b'", "b": [' + b'"]]]]"' + b"]}"
    assert jsonsafe.loads(shallow)["b"] == ["]]]]"]
    deep = b'{"a": "' + b"]" * 70 + b'", "b": ' + b"[" * 70 + b"]" * 70 + b"}"
    with pytest.raises(jsonsafe.Rejected) as caught:
        jsonsafe.loads(deep)
    assert jsonsafe.dotted(caught.value.problems[0][0]).startswith("b.0.0")

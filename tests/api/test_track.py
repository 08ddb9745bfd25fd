"""POST /api/experiments/{id}/track and POST /api/events/batch: validation, assignment checks,
idempotency and failure modes, against real PostgreSQL and Redis (drains run in-process)."""
from __future__ import annotations

import json
import uuid

import pytest

from core.config import libpq_url
from core.redis import get_redis
from services.ingestion import lookup as ingestion_lookup
from services.ingestion import staging as ingestion
from tests.support.ingestion import assign_users, count_rows, drain_all, rollup_mismatches

SERVICE = "pay_module"


@pytest.fixture
def running(create_experiment, settings):
    """A running experiment whose users u1..u4 hold assignments (round robin over its variants)."""
    experiment = create_experiment(start=True)
    held = assign_users(settings, experiment, ["u1", "u2", "u3", "u4"])
    return experiment, held


def track(client, auth, experiment_id, body, role=SERVICE, **kwargs):
    return client.post(f"/api/experiments/{experiment_id}/track", json=body, headers=auth(role), **kwargs)


def field_errors(response) -> dict:
    payload = response.get_json()
    return payload["errors"]["json"]


def test_track_queues_and_the_drain_writes_raw_event_and_rollups(client, auth, running, settings):
    experiment, held = running
    response = track(client, auth, experiment["id"], {
        "molam_id": "u1", "event_type": "conversion", "value": 49.99, "currency": "EUR",
        "metadata": {"source": "web", "page": "checkout"}, "occurred_at": "2026-11-20T00:30:00+01:00",
    })
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued" and len(body["event_id"]) == 32
    plain = track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "view", "value": 12.5})
    assert plain.status_code == 202, plain.get_json()
    assert count_rows(settings, "experiment_metrics") == 0  # the API never writes metric rows

    drain_all(get_redis(settings.redis_url))
    assert count_rows(settings, "experiment_metrics") == 2
    assert rollup_mismatches(settings) == []
    import psycopg

    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        row = conn.execute(
            "SELECT event_id, variant_id::text, value, currency, amount_minor, metadata, occurred_at "
            "FROM experiment_metrics WHERE event_type = 'conversion'"
        ).fetchone()
        rollups = {row[0]: row[1:] for row in conn.execute(
            "SELECT event_type, events, users, value_count, value_sum, value_sum_squares, user_value_sum_squares "
            "FROM experiment_variant_rollups"
        ).fetchall()}
        money = conn.execute(
            "SELECT molam_id, event_type, currency, day::text, variant_id::text, events, amount_minor "
            "FROM experiment_user_money_rollups"
        ).fetchall()
    assert row[0] == body["event_id"] and row[1] == held["u1"]  # variant filled in from the assignment
    # Money: exact minor units, no float value (never mixed into the plain value sums).
    assert row[2] is None and row[3] == "EUR" and row[4] == 4999
    assert row[5] == {"source": "web", "page": "checkout"}
    assert row[6].isoformat() == "2026-11-19T23:30:00+00:00"
    assert rollups["conversion"] == (1, 1, 0, 0.0, 0.0, 0.0)
    assert rollups["view"] == (1, 1, 1, 12.5, pytest.approx(12.5**2), pytest.approx(12.5**2))
    # The UTC day of occurred_at, not the sender's local day.
    assert money == [("u1", "conversion", "EUR", "2026-11-19", held["u1"], 1, 4999)]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"event_type": "purchase"}, "event_type"),
        ({"event_type": None}, "event_type"),
        ({"molam_id": None}, "molam_id"),
        ({"molam_id": ""}, "molam_id"),
        ({"molam_id": "x" * 201}, "molam_id"),
        ({"molam_id": "a\x00b"}, "molam_id"),
        ({"event_id": "e\x00"}, "event_id"),
        ({"metadata": {"k": "nul\x00here"}}, "metadata"),
        ({"value": "12"}, "value"),
        ({"value": True}, "value"),
        ({"value": 1e400}, "value"),
        ({"currency": "xof"}, "currency"),
        ({"currency": "ZZZ"}, "currency"),
        ({"currency": 978}, "currency"),
        ({"currency": "XAU", "value": 1}, "currency"),  # ISO code without a minor unit: not money
        ({"currency": "EUR"}, "value"),  # money needs its amount
        ({"currency": "EUR", "value": 10.005}, "value"),  # more decimals than EUR has
        ({"currency": "XOF", "value": 1.5}, "value"),
        ({"currency": "KWD", "value": "1.0005"}, "value"),
        ({"currency": "EUR", "value": "12,50"}, "value"),
        ({"currency": "EUR", "value": " 12.50"}, "value"),
        ({"currency": "EUR", "value": -5}, "value"),
        ({"currency": "EUR", "value": 1e400}, "value"),
        ({"currency": "EUR", "value": "Infinity"}, "value"),
        ({"currency": "EUR", "value": "NaN"}, "value"),
        ({"currency": "EUR", "value": True}, "value"),
        ({"currency": "XOF", "value": 10**16}, "value"),
        ({"metadata": ["a"]}, "metadata"),
        ({"metadata": {"blob": "x" * 4100}}, "metadata"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "e" * 129}, "event_id"),
        ({"event_id": 42}, "event_id"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2999-01-01T00:00:00Z"}, "occurred_at"),
        ({"variant_id": "green"}, "variant_id"),
        ({"colour": "green"}, "colour"),
        ({"experiment_id": str(uuid.uuid4())}, "experiment_id"),
    ],
)
def test_each_invalid_field_is_named_in_a_422(client, auth, running, settings, patch, field):
    experiment, _ = running
    body = {"molam_id": "u1", "event_type": "click"}
    body.update(patch)
    body = {k: v for k, v in body.items() if v is not None}
    response = track(client, auth, experiment["id"], body)
    assert response.status_code == 422, response.get_json()
    assert field in field_errors(response)
    assert get_redis(settings.redis_url).xlen(ingestion.STREAM_KEY) == 0


def test_non_finite_values_and_non_json_bodies_are_rejected(client, auth, running):
    experiment, _ = running
    for literal in ("NaN", "Infinity", "-Infinity"):
        response = client.post(
            f"/api/experiments/{experiment['id']}/track",
            data='{"molam_id": "u1", "event_type": "click", "value": ' + literal + "}",
            headers={**auth(SERVICE), "Content-Type": "application/json"},
        )
        assert response.status_code == 422 and "value" in field_errors(response)
    response = client.post(
        f"/api/experiments/{experiment['id']}/track", data="not json",
        headers={**auth(SERVICE), "Content-Type": "application/json"},
    )
    assert response.status_code == 400


def test_money_is_stored_exactly_in_minor_units_for_every_exponent(client, auth, running, settings):
    experiment, _ = running
    cases = [
        ("XOF", 1500, 1500), ("XOF", "1500.000", 1500), ("EUR", 10.1, 1010), ("EUR", "0.07", 7),
        ("EUR", 9999999999999.99, 999999999999999), ("KWD", "1.005", 1005), ("TND", 0.001, 1),
        ("CLF", 1.2345, 12345), ("JPY", 0, 0),
    ]
    for i, (currency, amount, _) in enumerate(cases):
        response = track(client, auth, experiment["id"], {
            "event_id": f"money-{i}", "molam_id": "u1", "event_type": "conversion", "value": amount, "currency": currency,
        })
        assert response.status_code == 202, (currency, amount, response.get_json())
    drain_all(get_redis(settings.redis_url))
    import psycopg

    with psycopg.connect(settings.database_url.replace("+psycopg", "")) as conn:
        stored = dict(conn.execute("SELECT event_id, amount_minor FROM experiment_metrics").fetchall())
    assert stored == {f"money-{i}": minor for i, (_, _, minor) in enumerate(cases)}


def test_a_batch_refuses_only_its_bad_amounts(client, auth, running, settings):
    experiment, _ = running
    events = [
        {"experiment_id": experiment["id"], "molam_id": "u1", "event_type": "conversion", "value": 10.5, "currency": "EUR"},
        {"experiment_id": experiment["id"], "molam_id": "u1", "event_type": "conversion", "value": 10.5, "currency": "XOF"},
        {"experiment_id": experiment["id"], "molam_id": "u1", "event_type": "refund", "value": 2, "currency": "ZZZ"},
    ]
    response = client.post("/api/events/batch", json={"events": events}, headers=auth(SERVICE))
    assert response.status_code == 202
    body = response.get_json()
    assert len(body["accepted"]) == 1
    assert [(r["index"], sorted(r["errors"])) for r in body["rejected"]] == [(1, ["value"]), (2, ["currency"])]


def test_metadata_of_exactly_4_kb_is_accepted(client, auth, running):
    experiment, _ = running
    filler = "x" * (ingestion.MAX_METADATA_BYTES - len('{"b":""}'))
    response = track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "view", "metadata": {"b": filler}})
    assert response.status_code == 202, response.get_json()


def test_unassigned_user_is_a_422_on_molam_id(client, auth, running, settings):
    experiment, _ = running
    response = track(client, auth, experiment["id"], {"molam_id": "stranger", "event_type": "click"})
    assert response.status_code == 422
    assert "molam_id" in field_errors(response)
    assert get_redis(settings.redis_url).xlen(ingestion.STREAM_KEY) == 0


def test_variant_mismatch_is_a_422_on_variant_id(client, auth, running):
    experiment, held = running
    other = next(v["id"] for v in experiment["variants"] if v["id"] != held["u1"])
    response = track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "click", "variant_id": other})
    assert response.status_code == 422
    assert "variant_id" in field_errors(response)
    matching = track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "click", "variant_id": held["u1"]})
    assert matching.status_code == 202


def test_unknown_experiment_is_404_and_archived_is_409(client, auth, running, settings):
    response = track(client, auth, uuid.uuid4(), {"molam_id": "u1", "event_type": "click"})
    assert response.status_code == 404
    experiment, _ = running
    for action in ("stop", "archive"):
        assert client.post(f"/api/experiments/{experiment['id']}/{action}", headers=auth("ops_admin")).status_code == 200
    response = track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "click"})
    assert response.status_code == 409


def test_stopped_experiment_still_accepts_late_events(client, auth, running):
    experiment, _ = running
    assert client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin")).status_code == 200
    assert track(client, auth, experiment["id"], {"molam_id": "u2", "event_type": "conversion"}).status_code == 202


@pytest.mark.parametrize(("role", "status"), [("pay_module", 202), ("connect_module", 202), ("ops_admin", 202),
                                               ("marketing", 403), ("data_science", 403)])
def test_track_roles(client, auth, running, role, status):
    experiment, _ = running
    assert track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "click"}, role=role).status_code == status
    batch = client.post("/api/events/batch", json={"events": [{"experiment_id": experiment["id"], "molam_id": "u1",
                                                               "event_type": "click"}]}, headers=auth(role))
    assert batch.status_code == status


def test_track_requires_a_token(client, running):
    experiment, _ = running
    response = client.post(f"/api/experiments/{experiment['id']}/track", json={"molam_id": "u1", "event_type": "click"})
    assert response.status_code == 401


def test_cache_miss_reads_postgres_and_caches_the_assignment(client, auth, running, settings):
    experiment, held = running
    redis_client = get_redis(settings.redis_url)
    key = f"exp:asg:{experiment['id']}:u3"
    assert redis_client.get(key) is None
    assert track(client, auth, experiment["id"], {"molam_id": "u3", "event_type": "click"}).status_code == 202
    cached = json.loads(redis_client.get(key))
    assert cached["variant_id"] == held["u3"] and "assigned_at" in cached
    assert 0 < redis_client.ttl(key) <= ingestion_lookup.ASSIGNMENT_CACHE_TTL_S
    assert redis_client.get(f"exp:def:{experiment['id']}") is not None  # the definition is re-cached too


def test_a_cached_assignment_is_trusted_without_postgres(client, auth, running, settings):
    experiment, held = running
    redis_client = get_redis(settings.redis_url)
    redis_client.set(f"exp:asg:{experiment['id']}:cached-only",
                     json.dumps({"variant_id": held["u1"], "assigned_at": "2026-11-26T00:00:00+00:00"}))
    assert track(client, auth, experiment["id"], {"molam_id": "cached-only", "event_type": "view"}).status_code == 202


def test_batch_with_mixed_valid_and_invalid_events(client, auth, running, settings):
    experiment, held = running
    other = next(v["id"] for v in experiment["variants"] if v["id"] != held["u2"])
    events = [
        {"experiment_id": experiment["id"], "molam_id": "u1", "event_type": "conversion", "value": 10, "event_id": "b-0"},
        {"experiment_id": experiment["id"], "molam_id": "u1", "event_type": "bogus"},
        {"experiment_id": experiment["id"], "molam_id": "nobody", "event_type": "click"},
        {"experiment_id": experiment["id"], "molam_id": "u2", "event_type": "click", "variant_id": other},
        {"experiment_id": str(uuid.uuid4()), "molam_id": "u1", "event_type": "click"},
        {"molam_id": "u1", "event_type": "click"},
        "not an object",
        {"experiment_id": experiment["id"], "molam_id": "u2", "event_type": "view", "event_id": "b-7"},
    ]
    response = client.post("/api/events/batch", json={"events": events}, headers=auth(SERVICE))
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["accepted"] == ["b-0", "b-7"]
    rejected = {r["index"]: r["errors"] for r in body["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4, 5, 6]
    assert "event_type" in rejected[1] and "molam_id" in rejected[2] and "variant_id" in rejected[3]
    assert "experiment_id" in rejected[4] and "experiment_id" in rejected[5] and "_schema" in rejected[6]
    drain_all(get_redis(settings.redis_url))
    assert count_rows(settings, "experiment_metrics") == 2
    assert rollup_mismatches(settings) == []


@pytest.mark.parametrize("body", [{}, {"events": []}, {"events": "x"}, [1, 2],
                                  {"events": [{}] * (ingestion.MAX_BATCH_REQUEST + 1)},
                                  {"events": [{}], "extra": 1}])
def test_batch_envelope_errors(client, auth, running, body):
    response = client.post("/api/events/batch", json=body, headers=auth(SERVICE))
    assert response.status_code == 422, response.get_json()


def test_duplicate_event_ids_count_once_within_and_across_requests(client, auth, running, settings):
    experiment, _ = running
    event = {"experiment_id": experiment["id"], "molam_id": "u1", "event_type": "conversion", "value": 5,
             "event_id": "dup-1"}
    response = client.post("/api/events/batch", json={"events": [event, event, dict(event, event_id="dup-2")]},
                           headers=auth(SERVICE))
    assert response.get_json()["accepted"] == ["dup-1", "dup-1", "dup-2"]
    single = {k: v for k, v in event.items() if k != "experiment_id"}
    assert track(client, auth, experiment["id"], single).status_code == 202
    totals = drain_all(get_redis(settings.redis_url))
    # ...and again after the first copies were written.
    assert track(client, auth, experiment["id"], single).status_code == 202
    totals2 = drain_all(get_redis(settings.redis_url))
    assert count_rows(settings, "experiment_metrics") == 2
    assert totals["inserted"] == 2 and totals["duplicates"] == 2 and totals2["duplicates"] == 1
    assert rollup_mismatches(settings) == []
    import psycopg

    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        assert conn.execute("SELECT sum(events), sum(value_sum) FROM experiment_variant_rollups").fetchone() == (2, 10.0)


def test_redis_down_is_503_with_retry_after_and_the_retry_counts_once(client, auth, running, settings):
    from api import create_app

    experiment, _ = running
    down = create_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))
    body = {"molam_id": "u1", "event_type": "conversion", "value": 3, "event_id": "retry-me"}
    refused = down.test_client().post(f"/api/experiments/{experiment['id']}/track", json=body, headers=auth(SERVICE))
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    batch = down.test_client().post("/api/events/batch", json={"events": [dict(body, experiment_id=experiment["id"])]},
                                    headers=auth(SERVICE))
    assert batch.status_code == 503 and "Retry-After" in batch.headers
    assert get_redis(settings.redis_url).xlen(ingestion.STREAM_KEY) == 0
    # The client retries (twice: a timeout can hide a success) with the same event_id.
    assert track(client, auth, experiment["id"], body).status_code == 202
    assert track(client, auth, experiment["id"], body).status_code == 202
    drain_all(get_redis(settings.redis_url))
    assert count_rows(settings, "experiment_metrics") == 1
    assert rollup_mismatches(settings) == []


def test_full_backlog_refuses_with_503(client, auth, running, settings, monkeypatch):
    experiment, _ = running
    monkeypatch.setattr(ingestion, "MAX_BACKLOG_ENTRIES", 2)
    # Two callers, each within its share (INGEST_SERVICE_SHARE=0.5: one entry each), fill it.
    for sub in ("svc-a", "svc-b"):
        response = client.post(f"/api/experiments/{experiment['id']}/track", json={"molam_id": "u1", "event_type": "click"},
                               headers=auth(SERVICE, sub))
        assert response.status_code == 202
    refused = client.post(f"/api/experiments/{experiment['id']}/track", json={"molam_id": "u1", "event_type": "click"},
                          headers=auth(SERVICE, "svc-c"))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert get_redis(settings.redis_url).xlen(ingestion.STREAM_KEY) == 2


def test_accepted_events_are_counted_in_prometheus(client, auth, running):
    from core.metrics import EXPERIMENT_METRICS, EXPERIMENT_METRICS_ACCEPTED

    experiment, _ = running
    persisted = EXPERIMENT_METRICS.labels(experiment_id=experiment["id"], event_type="refund")._value.get()
    counter = EXPERIMENT_METRICS_ACCEPTED.labels(experiment_id=experiment["id"], event_type="refund")
    before = counter._value.get()
    track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "refund"})
    client.post("/api/events/batch", json={"events": [
        {"experiment_id": experiment["id"], "molam_id": "u2", "event_type": "refund"},
        {"experiment_id": experiment["id"], "molam_id": "nobody", "event_type": "refund"},
    ]}, headers=auth(SERVICE))
    assert counter._value.get() - before == 2
    # Persisted events are counted by the drain, not at acceptance.
    assert EXPERIMENT_METRICS.labels(experiment_id=experiment["id"], event_type="refund")._value.get() == persisted


def test_openapi_schemas_describe_the_validated_fields(app):
    from marshmallow import validate

    from api.events import BatchEventSchema, BatchSchema, TrackEventSchema
    from models.enums import EVENT_TYPES

    assert set(TrackEventSchema().fields) == ingestion.TRACK_FIELDS
    assert set(BatchEventSchema().fields) == ingestion.BATCH_FIELDS

    def only(field, kind):
        (found,) = [v for v in field.validators if isinstance(v, kind)]
        return found

    schema = TrackEventSchema()
    for name, limit in (("event_id", ingestion.MAX_EVENT_ID), ("molam_id", ingestion.MAX_MOLAM_ID)):
        length = only(schema.fields[name], validate.Length)
        assert (length.min, length.max) == (1, limit), name
    assert tuple(only(schema.fields["event_type"], validate.OneOf).choices) == tuple(EVENT_TYPES)
    assert schema.fields["molam_id"].required and schema.fields["event_type"].required
    # value: a finite number, or (money) a decimal number or string stored as exact minor units.
    assert [kind["type"] for kind in schema.fields["value"].metadata["oneOf"]] == ["number", "string"]
    assert "minor units" in schema.fields["value"].metadata["description"]
    assert str(ingestion.MAX_METADATA_BYTES) in schema.fields["metadata"].metadata["description"]
    events = only(BatchSchema().fields["events"], validate.Length)
    assert (events.min, events.max) == (1, ingestion.MAX_BATCH_REQUEST)
    assert BatchEventSchema().fields["experiment_id"].required
    with app.test_client() as c:
        spec = c.get("/openapi.json").get_json()
    assert "/api/experiments/{experiment_id}/track" in spec["paths"]
    assert "/api/events/batch" in spec["paths"]


def test_the_one_round_trip_path_applies_the_same_rules(client, auth, running, settings):
    """Once the definition and the assignment are cached, track is one Lua call: same answers."""
    experiment, held = running
    redis_client = get_redis(settings.redis_url)
    assert track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "click"}).status_code == 202
    definition_key, assignment_key = f"exp:def:{experiment['id']}", f"exp:asg:{experiment['id']}:u1"
    assert redis_client.exists(definition_key, assignment_key) == 2
    other = next(v["id"] for v in experiment["variants"] if v["id"] != held["u1"])

    mismatch = track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "click", "variant_id": other})
    assert mismatch.status_code == 422 and "variant_id" in field_errors(mismatch)
    assert track(client, auth, experiment["id"],
                 {"molam_id": "u1", "event_type": "click", "variant_id": held["u1"]}).status_code == 202

    document = json.loads(redis_client.get(definition_key))
    redis_client.set(definition_key, json.dumps(dict(document, status="archived")))
    assert track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "click"}).status_code == 409
    redis_client.set(definition_key, json.dumps(document))

    # An unreadable cached assignment is not trusted: PostgreSQL answers and re-caches it.
    redis_client.set(assignment_key, '{"variant_id": "\\" injected"}')
    assert track(client, auth, experiment["id"], {"molam_id": "u1", "event_type": "view"}).status_code == 202
    assert json.loads(redis_client.get(assignment_key))["variant_id"] == held["u1"]

    drain_all(redis_client)
    assert count_rows(settings, "experiment_metrics") == 3
    assert count_rows(settings, "experiment_metric_dead_letters") == 0
    assert rollup_mismatches(settings) == []


def test_non_string_event_type_is_a_422_not_a_crash(client, auth, create_experiment):
    experiment = create_experiment(start=True)
    body = {"molam_id": "u1", "event_type": {}, "variant_id": experiment["variants"][0]["id"]}
    response = client.post(f"/api/experiments/{experiment['id']}/track", json=body, headers=auth("pay_module"))
    assert response.status_code == 422
    assert "event_type" in str(response.get_json()["errors"])
    batch = client.post("/api/events/batch", json={"events": [{**body, "experiment_id": experiment["id"], "event_type": ["view"]}]}, headers=auth("pay_module"))
    assert batch.status_code == 202
    assert batch.get_json()["accepted"] == [] and "event_type" in str(batch.get_json()["rejected"][0]["errors"])

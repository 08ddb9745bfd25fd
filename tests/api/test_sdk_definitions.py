"""GET /api/sdk/definitions and /api/sdk/stream: content, ETag, 304, change stream, roles."""
from __future__ import annotations

import json
import threading
import time

import pytest

from core.redis import get_redis
from services import cache
from services.experiments import assignment
from services.experiments.definitions import definition_from_document
from services.sdk import definitions as snapshots

SERVICE = "pay_module"


def _get(client, auth, role=SERVICE, **headers):
    return client.get("/api/sdk/definitions", headers={**auth(role), **headers})


def test_lists_running_experiments_with_evaluation_data(client, auth, create_experiment):
    running = create_experiment(start=True, coverage=40, targeting={"country": ["SN"], "min_txn": 2})
    create_experiment(name="draft")  # drafts are not listed
    response = _get(client, auth)
    assert response.status_code == 200
    assert response.headers["ETag"].startswith('"') and not response.headers["ETag"].startswith("W/")
    document = response.get_json()
    assert document["format"] == snapshots.FORMAT and document["buckets"] == 10_000
    assert [e["id"] for e in document["experiments"]] == [running["id"]]
    experiment = document["experiments"][0]
    assert experiment["status"] == "running" and experiment["mode"] == "ab" and experiment["evaluation"] == "local"
    assert experiment["coverage"] == 40 and experiment["targeting"] == {"country": ["SN"], "min_txn": 2}
    assert experiment["version"] == running["version"]
    assert experiment["server_buckets"] == [] and experiment["bandit_weights"] is None
    assert experiment["variants"] == [
        {"id": v["id"], "name": v["name"], "is_control": v["is_control"], "config": v["config"],
         "share": v["traffic_share"], "paused": False}
        for v in running["variants"]
    ]


def test_if_none_match_gives_304_until_something_changes(client, auth, create_experiment):
    experiment = create_experiment(start=True)
    first = _get(client, auth)
    etag = first.headers["ETag"]
    again = _get(client, auth, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["ETag"] == etag and again.data == b""
    assert _get(client, auth, **{"If-None-Match": f'"other", {etag}'}).status_code == 304
    assert _get(client, auth, **{"If-None-Match": '"other"'}).status_code == 200
    stopped = client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin"))
    assert stopped.status_code == 200
    changed = _get(client, auth, **{"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.get_json()["experiments"] == []


def test_etag_is_the_same_from_any_build(client, auth, create_experiment):
    create_experiment(start=True)
    etag = _get(client, auth).headers["ETag"]
    get_redis_client = get_redis(client.application.extensions["settings"].redis_url)
    get_redis_client.delete(cache.SDK_DEFINITIONS_SNAPSHOT_KEY)
    snapshots.forget_local_snapshot()
    assert _get(client, auth).headers["ETag"] == etag


@pytest.mark.parametrize(("role", "status"), [("ops_admin", 200), ("pay_module", 200), ("marketing", 403), ("data_science", 403)])
def test_roles(client, auth, role, status):
    assert _get(client, auth, role).status_code == status
    assert client.get("/api/sdk/definitions").status_code == 401


def test_pause_marks_the_buckets_whose_stored_arm_may_differ(client, auth, create_experiment):
    experiment = create_experiment(
        start=True,
        targeting={},
        variants=[
            {"name": "A", "config": {}, "traffic_share": 50, "is_control": True},
            {"name": "B", "config": {}, "traffic_share": 25},
            {"name": "C", "config": {}, "traffic_share": 25},
        ],
    )
    a, b, c = (v["id"] for v in experiment["variants"])
    paused = client.post(f"/api/experiments/{experiment['id']}/variants/{a}/pause", headers=auth("ops_admin"))
    assert paused.status_code == 200
    document = _get(client, auth).get_json()["experiments"][0]
    # Unpaused: A [0,5000) B [5000,7500) C [7500,10000); A paused: B [0,5000) C [5000,10000).
    # Every bucket below 7,500 may hold another arm than today's split gives.
    assert document["server_buckets"] == [[0, 7500]]
    assert [v["paused"] for v in document["variants"]] == [True, False, False]
    resumed = client.post(f"/api/experiments/{experiment['id']}/variants/{a}/resume", headers=auth("ops_admin"))
    assert resumed.status_code == 200
    document = _get(client, auth).get_json()["experiments"][0]
    assert document["server_buckets"] == [[0, 7500]]  # users assigned during the pause keep B or C


def test_server_buckets_agree_with_the_assignment_split():
    """Brute force over every bucket: outside server_buckets, all configurations agree."""
    variants = [
        {"id": f"00000000-0000-0000-0000-00000000000{i}", "name": f"v{i}", "config": {}, "is_control": i == 0,
         "traffic_share": share, "paused": i == 2}
        for i, share in enumerate([12.5, 30, 20, 37.5])
    ]
    document = {"id": "e", "status": "running", "mode": "ab", "coverage": 100, "targeting": {}, "version": 1,
                "bandit": {}, "variants": variants}
    definition = definition_from_document(document)
    configurations = {frozenset(), frozenset({variants[2]["id"]}), frozenset({variants[2]["id"], variants[0]["id"]})}
    ranges = snapshots.server_buckets(definition, configurations)
    outside = [b for b in range(10_000) if not any(lo <= b < hi for lo, hi in ranges)]
    maps = []
    for paused in configurations:
        variant_docs = [{**v, "paused": v["id"] in paused} for v in variants]
        maps.append(definition_from_document({**document, "variants": variant_docs}))
    today = definition
    for bucket in range(10_000):
        arms = {assignment.variant_for_bucket(m, bucket).id for m in maps}
        inside = bucket not in outside
        assert inside == (len(arms | {assignment.variant_for_bucket(today, bucket).id}) > 1), bucket


def test_bandit_experiments_carry_published_weights_and_are_server_evaluated(client, auth, create_experiment, settings):
    experiment = create_experiment(start=True, mode="bandit", targeting={})
    a, b = (v["id"] for v in experiment["variants"])
    get_redis(settings.redis_url).set(
        cache.weights_key(experiment["id"]), json.dumps({"weights": {a: 0.25, b: 0.75}, "burn_in": False, "computed_at": "x"})
    )
    cache.announce_definitions_change(get_redis(settings.redis_url))
    document = _get(client, auth).get_json()["experiments"][0]
    assert document["evaluation"] == "server"
    assert document["bandit_weights"] == {"weights": {a: 0.25, b: 0.75}, "burn_in": False}


def test_works_with_redis_down(app, auth, create_experiment, settings):
    create_experiment(start=True)
    broken = app.extensions["settings"].with_overrides(redis_url="redis://127.0.0.1:1/0")
    from api import create_app

    other = create_app(broken)
    response = other.test_client().get("/api/sdk/definitions", headers=auth(SERVICE))
    assert response.status_code == 200 and len(response.get_json()["experiments"]) == 1


def _read_events(response, until, timeout_s):
    """Read SSE events from a streamed test response until ``until(events)`` or timeout."""
    events, buffer = [], b""
    deadline = time.monotonic() + timeout_s
    iterator = iter(response.response)
    while time.monotonic() < deadline:
        chunk = next(iterator)
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in raw.decode().split("\n") if ": " in line and not line.startswith(":"))
            if "event" in fields:
                events.append((fields["event"], json.loads(fields["data"]), time.monotonic()))
        if until(events):
            break
    return events


def test_stream_sends_the_current_etag_then_each_change(client, auth, create_experiment):
    experiment = create_experiment(start=True)
    etag = _get(client, auth).headers["ETag"]
    response = client.get("/api/sdk/stream", headers=auth(SERVICE), buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    try:
        first = _read_events(response, lambda e: len(e) >= 1, 5)
        assert first[0][0] == "definitions" and first[0][1]["etag"] == etag
        stopped_at = []

        def stop():
            time.sleep(0.3)
            stopped_at.append(time.monotonic())
            client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin"))

        threading.Thread(target=stop).start()
        changed = _read_events(response, lambda e: len(e) >= 1, 5)
        assert changed[0][0] == "definitions" and changed[0][1]["etag"] != etag
        assert changed[0][1]["etag"] == _get(client, auth).headers["ETag"]
        assert changed[0][2] - stopped_at[0] < 1.0
    finally:
        response.close()


def test_stream_skips_the_first_event_when_the_client_is_current_and_ends_after_max_duration(app, auth, create_experiment):
    create_experiment(start=True)
    client = app.test_client()
    etag = _get(client, auth).headers["ETag"]
    settings = app.extensions["settings"]
    app.extensions["settings"] = settings.with_overrides(sdk_stream_max_seconds=0.5, sdk_stream_heartbeat_s=0.2)
    try:
        response = client.get("/api/sdk/stream", headers={**auth(SERVICE), "Last-Event-ID": etag.strip('"')}, buffered=False)
        events = _read_events(response, lambda e: any(name == "reconnect" for name, _, _ in e), 5)
        response.close()
    finally:
        app.extensions["settings"] = settings
    assert [name for name, _, _ in events] == ["reconnect"]


def test_stream_slots_are_capped_and_released(app, auth):
    client = app.test_client()
    slots = app.extensions["sdk_stream_slots"]
    assert slots.open == 0
    held = [client.get("/api/sdk/stream", headers=auth(SERVICE), buffered=False) for _ in range(slots.limit)]
    refused = client.get("/api/sdk/stream", headers=auth(SERVICE))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "poll" in refused.get_json()["message"]
    for response in held:
        response.close()
    assert slots.open == 0
    again = client.get("/api/sdk/stream", headers=auth(SERVICE), buffered=False)
    assert again.status_code == 200
    again.close()


def test_stream_roles(client, auth):
    assert client.get("/api/sdk/stream", headers=auth("marketing")).status_code == 403


def test_bulk_read_equals_the_cached_definition_document(client, auth, create_experiment):
    """The snapshot's one-statement read and definition_document agree on every field used."""
    from core import db
    from services.experiments.definitions import definition_document
    from services.experiments.lifecycle import get_experiment

    uneven = [
        {"name": "A", "config": {"k": [1, {"n": None}]}, "traffic_share": 33.33, "is_control": True},
        {"name": "B", "config": {}, "traffic_share": 0},
        {"name": "C", "config": {"é": "ü"}, "traffic_share": 66.67},
    ]
    started = [
        create_experiment(start=True, coverage=12.34, variants=uneven, targeting={"device": ["ios"], "min_txn": 3}),
        create_experiment(start=True, mode="bandit", name="bandit"),
    ]
    session = db.new_session()
    try:
        bulk = {d["id"]: d for d in snapshots.running_definition_documents(session)}
        for experiment in started:
            expected = definition_document(get_experiment(session, __import__("uuid").UUID(experiment["id"])))
            got = bulk[experiment["id"]]
            for key in ("id", "status", "mode", "coverage", "targeting", "version", "variants"):
                assert got[key] == expected[key], key
    finally:
        session.close()


def test_stream_hears_a_change_back_to_what_the_watcher_saw_last(app, client, auth, create_experiment, settings):
    # The watcher polls at "empty"; an experiment starts and a stream connects (it sends
    # the new ETag); the experiment stops before the next poll, so the watcher sees its
    # old ETag again under a new version. The stream must still announce "empty".
    from services.sdk import stream as change_stream

    empty = _get(client, auth).headers["ETag"]
    watcher = change_stream.ChangeWatcher(lambda: get_redis(settings.redis_url), poll_interval_s=1.5)
    idle = change_stream.events(watcher, lambda: empty, known_etag=empty, max_seconds=10, heartbeat_s=5, retry_ms=1000)
    next(idle)  # retry line; the watcher's first poll is at "empty"
    deadline = time.monotonic() + 2
    while watcher.etag != empty and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watcher.etag == empty
    experiment = create_experiment(start=True)
    running = _get(client, auth).headers["ETag"]
    assert running != empty
    connected = change_stream.events(
        watcher, lambda: snapshots.current_snapshot(get_redis(settings.redis_url)).header_etag,
        known_etag=None, max_seconds=10, heartbeat_s=5, retry_ms=1000,
    )
    next(connected)
    assert json.loads(next(connected).decode().split("data: ")[1])["etag"] == running
    assert client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin")).status_code == 200
    assert json.loads(next(connected).decode().split("data: ")[1])["etag"] == empty
    connected.close()
    idle.close()

"""Per-caller budgets beyond assign (track, batches, export, audit verify) and the per-caller
share of the ingestion backlog, against real Redis and PostgreSQL."""
from __future__ import annotations

import pytest

from core import db
from core.redis import get_redis
from services.cache import STREAM_CALLER_ENTRIES_KEY
from services.ingestion import staging as ingestion
from tests.support.ingestion import assign_users, drain_all
from tests.support.redis_monitor import client_commands

SERVICE = "pay_module"


@pytest.fixture
def make_client(settings, app):
    from api import create_app

    def build(**overrides):
        limited = create_app(settings.with_overrides(**overrides))
        limited.config["TESTING"] = True
        return limited.test_client()

    try:
        yield build
    finally:
        db.init_engine(settings.database_url)


@pytest.fixture
def running(create_experiment, settings):
    experiment = create_experiment(start=True, targeting={})
    assign_users(settings, experiment, ["u1", "u2", "u3", "u4"])
    return experiment


def _assert_429(response, limit_text: str | None = None):
    assert response.status_code == 429, response.get_json()
    assert int(response.headers["Retry-After"]) >= 1
    body = response.get_json()
    assert body["code"] == 429 and body["status"] == "Too Many Requests" and body["message"]
    if limit_text:
        assert limit_text in body["message"]


def _track(client, auth, experiment, sub, molam_id="u1"):
    return client.post(
        f"/api/experiments/{experiment['id']}/track", json={"molam_id": molam_id, "event_type": "click"},
        headers=auth(SERVICE, sub),
    )


def test_track_budget_per_caller(make_client, auth, running, settings):
    limited = make_client(track_rate_limit="3/minute")
    redis_client = get_redis(settings.redis_url)
    # Cold (PostgreSQL fallback) and warm (the script) requests spend the same budget, once each.
    for n in range(3):
        assert _track(limited, auth, running, "svc-a", f"u{n + 1}").status_code == 202
    assert int(redis_client.get("ratelimit:track:svc-a")) == 3
    _assert_429(_track(limited, auth, running, "svc-a"), "3 per 1 minute")
    assert redis_client.xlen(ingestion.STREAM_KEY) == 3  # the refused event was not staged
    assert _track(limited, auth, running, "svc-b").status_code == 202
    # Assign has its own budget.
    assign = limited.post(f"/api/experiments/{running['id']}/assign", json={"molam_id": "z"}, headers=auth(SERVICE, "svc-a"))
    assert assign.status_code == 200


def test_events_batch_budget(make_client, auth, running, settings):
    limited = make_client(events_batch_rate_limit="2/minute")
    body = {"events": [{"experiment_id": running["id"], "molam_id": "u1", "event_type": "click"}]}
    headers = auth(SERVICE, "svc-batch")
    assert limited.post("/api/events/batch", json=body, headers=headers).status_code == 202
    # A batch whose every event is invalid still spends a request.
    bad = {"events": [{"experiment_id": running["id"], "molam_id": "u1", "event_type": "nope"}]}
    assert limited.post("/api/events/batch", json=bad, headers=headers).status_code == 202
    _assert_429(limited.post("/api/events/batch", json=body, headers=headers))
    assert get_redis(settings.redis_url).xlen(ingestion.STREAM_KEY) == 1
    # Single tracks are budgeted apart from batches.
    assert _track(limited, auth, running, "svc-batch").status_code == 202


def test_assignments_batch_budget(make_client, auth, running):
    limited = make_client(assignments_batch_rate_limit="1/minute")
    body = {"exposures": [{"experiment_id": running["id"], "molam_id": "x", "variant_id": running["variants"][0]["id"],
                           "evaluated_at": "2026-12-01T00:00:00+00:00"}]}
    headers = auth(SERVICE, "svc-sdk")
    assert limited.post("/api/assignments/batch", json=body, headers=headers).status_code == 200
    _assert_429(limited.post("/api/assignments/batch", json=body, headers=headers))
    assert limited.post("/api/assignments/batch", json=body, headers=auth(SERVICE, "other-sdk")).status_code == 200


def test_export_and_audit_verify_budgets(make_client, auth, running):
    limited = make_client(export_rate_limit="1/minute", audit_verify_rate_limit="1/minute")
    analyst = auth("data_science", "analyst")
    assert limited.get(f"/api/experiments/{running['id']}/export", headers=analyst).status_code == 200
    _assert_429(limited.get(f"/api/experiments/{running['id']}/export", headers=analyst))
    assert limited.get("/api/audit/verify", headers=analyst).status_code == 200
    _assert_429(limited.get("/api/audit/verify", headers=analyst))
    assert limited.get("/api/audit/verify", headers=auth("ops_admin", "admin")).status_code == 200


def test_budgets_hold_with_redis_unreachable(make_client, auth, running, settings):
    down = make_client(redis_url="redis://127.0.0.1:1/0", export_rate_limit="1/minute", worker_processes=1)
    analyst = auth("data_science", "analyst-down")
    assert down.get(f"/api/experiments/{running['id']}/export", headers=analyst).status_code == 200
    _assert_429(down.get(f"/api/experiments/{running['id']}/export", headers=analyst))


# --- the backlog share -----------------------------------------------------------------


def test_one_caller_cannot_fill_the_backlog(make_client, auth, running, settings, monkeypatch):
    monkeypatch.setattr(ingestion, "MAX_BACKLOG_ENTRIES", 4)
    shared = make_client(ingest_service_share=0.5)
    redis_client = get_redis(settings.redis_url)
    for n in range(2):
        assert _track(shared, auth, running, "noisy", f"u{n + 1}").status_code == 202
    refused = _track(shared, auth, running, "noisy")
    _assert_429(refused)
    assert "share of the ingestion backlog" in refused.get_json()["message"]
    batch = shared.post("/api/events/batch", json={"events": [
        {"experiment_id": running["id"], "molam_id": "u1", "event_type": "click"}]}, headers=auth(SERVICE, "noisy"))
    _assert_429(batch)
    assert redis_client.xlen(ingestion.STREAM_KEY) == 2
    # Another service still gets in, up to its own share.
    assert _track(shared, auth, running, "quiet").status_code == 202
    assert shared.post("/api/events/batch", json={"events": [
        {"experiment_id": running["id"], "molam_id": "u2", "event_type": "click"}]}, headers=auth(SERVICE, "quiet")).status_code == 202
    assert {k.decode(): int(v) for k, v in redis_client.hgetall(STREAM_CALLER_ENTRIES_KEY).items()} == {"noisy": 2, "quiet": 2}
    # The drain gives each caller its share back as it deletes the entries.
    drain_all(redis_client)
    assert redis_client.xlen(ingestion.STREAM_KEY) == 0
    assert redis_client.hgetall(STREAM_CALLER_ENTRIES_KEY) == {}
    assert _track(shared, auth, running, "noisy").status_code == 202



def test_backlog_limit_is_a_setting(make_client, auth, running, settings):
    """INGEST_MAX_BACKLOG_ENTRIES moves the point where track and batch answer 503, queueing nothing."""
    limited = make_client(ingest_max_backlog_entries=4, ingest_service_share=0.5)
    redis_client = get_redis(settings.redis_url)
    for sub in ("svc-a", "svc-b"):  # each within its share (2 entries) of the 4
        for n in range(2):
            assert _track(limited, auth, running, sub, f"u{n + 1}").status_code == 202
    refused = _track(limited, auth, running, "svc-c")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    batch = limited.post("/api/events/batch", json={"events": [
        {"experiment_id": running["id"], "molam_id": "u3", "event_type": "click"}]}, headers=auth(SERVICE, "svc-c"))
    assert batch.status_code == 503 and batch.headers["Retry-After"] == "5"
    assert redis_client.xlen(ingestion.STREAM_KEY) == 4
    drain_all(redis_client)
    assert _track(limited, auth, running, "svc-c").status_code == 202

def test_a_deleted_stream_does_not_leave_callers_refused(make_client, auth, running, settings, monkeypatch):
    monkeypatch.setattr(ingestion, "MAX_BACKLOG_ENTRIES", 2)
    shared = make_client(ingest_service_share=0.5)
    redis_client = get_redis(settings.redis_url)
    assert _track(shared, auth, running, "svc").status_code == 202
    _assert_429(_track(shared, auth, running, "svc"))
    redis_client.delete(ingestion.STREAM_KEY)  # an operator threw the backlog away
    assert _track(shared, auth, running, "svc").status_code == 202


def test_a_warm_track_is_one_redis_round_trip(make_client, auth, running, settings):
    budgeted = make_client(track_rate_limit="100/minute", ingest_service_share=0.5)
    assert _track(budgeted, auth, running, "svc-rtt").status_code == 202  # warms the caches
    sent = client_commands(settings.redis_url, lambda: _track(budgeted, auth, running, "svc-rtt"))
    # The budget, the definition and assignment reads, the scope, the share and the XADD: one EVALSHA.
    assert len(sent) == 1 and sent[0].upper().startswith("EVALSHA"), sent
    assert int(get_redis(settings.redis_url).get("ratelimit:track:svc-rtt")) == 2

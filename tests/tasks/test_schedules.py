"""Scheduled starts and stops with a real Celery worker and beat (a short schedule)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support.waiting import wait_for
from tests.support.worker import running_worker

SCHEDULER = "sira-scheduler"


@pytest.fixture
def worker(settings, tmp_path: Path):
    with running_worker(settings, tmp_path, "schedules", {"SCHEDULE_INTERVAL": "1", "SCHEDULE_RETRY_INTERVAL": "2"}, concurrency=1) as process:
        yield process


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _status(client, auth, experiment_id):
    return client.get(f"/api/experiments/{experiment_id}", headers=auth()).get_json()["status"]


def _schedule(client, auth, experiment_id):
    return client.get(f"/api/experiments/{experiment_id}/schedule", headers=auth("marketing")).get_json()


def test_schedule_fields_are_validated(client, auth, create_experiment):
    from tests.conftest import experiment_body

    now = datetime.now(timezone.utc)
    for fields, name in [
        ({"start_at": _iso(now + timedelta(hours=2)), "end_at": _iso(now + timedelta(hours=1))}, "end_at"),
        ({"start_at": "tomorrow"}, "start_at"),
        ({"end_at": 12}, "end_at"),
    ]:
        response = client.post("/api/experiments", json=experiment_body(**fields), headers=auth())
        assert response.status_code == 422 and name in response.get_json()["errors"]["json"], fields
    naive = client.post("/api/experiments", json=experiment_body(start_at="2030-01-01T10:00:00"), headers=auth()).get_json()
    assert naive["start_at"].startswith("2030-01-01T10:00:00") and naive["start_at"].endswith("+00:00")
    running = create_experiment(start=True)
    assert client.patch(f"/api/experiments/{running['id']}", json={"end_at": _iso(now + timedelta(days=3))}, headers=auth()).status_code == 200
    assert client.patch(f"/api/experiments/{running['id']}", json={"start_at": _iso(now)}, headers=auth()).status_code == 409
    upcoming = client.get("/api/schedules", headers=auth()).get_json()["upcoming"]
    assert [(u["experiment_id"], u["action"]) for u in upcoming] == [(running["id"], "stop"), (naive["id"], "start")]


def test_beat_starts_and_stops_on_time_and_audits_it(client, auth, create_experiment, worker):
    now = datetime.now(timezone.utc)
    experiment = create_experiment(targeting={}, start_at=_iso(now + timedelta(seconds=3)), end_at=_iso(now + timedelta(seconds=9)))
    started_at = wait_for(lambda: _status(client, auth, experiment["id"]) == "running" and datetime.now(timezone.utc), 60, "the start")
    assert started_at - (now + timedelta(seconds=3)) < timedelta(seconds=60)
    wait_for(lambda: _status(client, auth, experiment["id"]) == "stopped", 60, "the stop")
    audit = client.get(f"/api/audit?experiment_id={experiment['id']}", headers=auth()).get_json()
    by_action = {entry["action"]: entry for entry in audit}
    assert by_action["start"]["actor"] == SCHEDULER and by_action["stop"]["actor"] == SCHEDULER
    attempts = _schedule(client, auth, experiment["id"])["attempts"]
    assert [(a["action"], a["succeeded"]) for a in reversed(attempts)] == [("start", True), ("stop", True)]


def test_a_start_that_cannot_happen_is_recorded_and_retried(client, auth, create_experiment, worker):
    # Needs approval: the scheduled start fails, visibly, until someone approves.
    pricing = create_experiment(targeting={}, category="pricing", start_at=_iso(datetime.now(timezone.utc)))
    failures = wait_for(lambda: [a for a in _schedule(client, auth, pricing["id"])["attempts"] if not a["succeeded"]], 60, "a failed attempt")
    assert failures[0]["action"] == "start" and failures[0]["error"].startswith("approval required")
    listed = client.get("/api/schedules", headers=auth()).get_json()["failures"]
    assert any(f["experiment_id"] == pricing["id"] for f in listed)
    # Retried: more failed attempts accumulate while nothing changes.
    wait_for(lambda: len([a for a in _schedule(client, auth, pricing["id"])["attempts"] if not a["succeeded"]]) >= 2, 60, "a retry")
    client.post(f"/api/experiments/{pricing['id']}/approval-requests", json={}, headers=auth("marketing", sub="mariam"))
    client.post(f"/api/experiments/{pricing['id']}/approve", json={"comment": "ok"}, headers=auth("ops_admin", sub="olu"))
    wait_for(lambda: _status(client, auth, pricing["id"]) == "running", 60, "the start after approval")
    assert _schedule(client, auth, pricing["id"])["attempts"][0]["succeeded"] is True

    # No room in the layer: the same, until the layer frees up.
    layer = client.post("/api/layers", json={"name": "full"}, headers=auth()).get_json()
    blocker = create_experiment(start=True, targeting={}, layer_id=layer["id"], layer_allocation=100)
    waiting = create_experiment(targeting={}, layer_id=layer["id"], layer_allocation=50, start_at=_iso(datetime.now(timezone.utc)))
    failure = wait_for(lambda: [a for a in _schedule(client, auth, waiting["id"])["attempts"] if not a["succeeded"]], 60, "a layer failure")
    assert "0% free" in failure[0]["error"]
    client.post(f"/api/experiments/{blocker['id']}/stop", headers=auth())
    wait_for(lambda: _status(client, auth, waiting["id"]) == "running", 60, "the start once the layer has room")
    audit = client.get(f"/api/audit?experiment_id={waiting['id']}", headers=auth()).get_json()
    assert next(e for e in audit if e["action"] == "start")["actor"] == SCHEDULER

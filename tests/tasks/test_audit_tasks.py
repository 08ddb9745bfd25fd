"""The audit chain's tasks in a real Celery worker with its beat: checkpoints on schedule, and the
full verification queued by the API and answered through its job."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.worker import running_worker


@pytest.fixture
def worker(settings, tmp_path: Path):
    with running_worker(settings, tmp_path, "audit", {"AUDIT_CHECKPOINT_INTERVAL": "1"}, concurrency=1) as process:
        yield process


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_beat_signs_checkpoints_and_the_worker_runs_full_verifications(client, auth, create_experiment, worker):
    for _ in range(3):
        create_experiment()

    def checkpoints():
        return client.get("/api/audit/checkpoints", headers=auth("data_science")).get_json()

    signed = _wait(lambda: [c for c in checkpoints() if c["entries"] == 3], 60, "a checkpoint of the 3 entries")
    assert signed[0]["key_id"] == "test"
    create_experiment()
    _wait(lambda: [c for c in checkpoints() if c["entries"] == 4], 30, "a checkpoint of the new head")

    queued = client.get("/api/audit/verify?full=1", headers=auth())
    assert queued.status_code == 202
    job = queued.get_json()
    done = _wait(
        lambda: (body := client.get(job["status_url"], headers=auth()).get_json())["status"] == "done" and body,
        60, "the full verification",
    )
    assert done["result"]["ok"] is True and done["result"]["mode"] == "full"
    assert done["result"]["entries"] == 4 and done["result"]["checkpoints_verified"] == len(checkpoints()) >= 2

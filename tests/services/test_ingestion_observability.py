"""What the drain tells operators: request ids of batches it could not write, and counters
that count persisted events once (duplicates and dead letters apart)."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from core import db, metrics
from core.redis import get_redis
from services.ingestion import drain as ingestion_drain
from services.ingestion import staging as ingestion
from services.ingestion import writer as ingestion_writer
from tests.services.test_ingestion import make_record
from tests.support.ingestion import assign_users


@pytest.fixture
def staged(create_experiment, settings):
    experiment = create_experiment(start=True)
    held = assign_users(settings, experiment, ["u1", "u2"])
    client = get_redis(settings.redis_url)
    now = datetime.now(timezone.utc)
    first = [make_record(experiment["id"], held["u1"], "u1", "click", None, "obs-1", now)]
    second = [make_record(experiment["id"], held["u2"], "u2", "conversion", 12.5, "obs-2", now),
              make_record(experiment["id"], held["u1"], "u1", "click", None, "obs-1", now)]  # a resend
    ingestion.stage(client, first, "req-first")
    ingestion.stage(client, second, "req-second")
    return experiment, client


def test_entries_carry_the_request_id(staged):
    _, client = staged
    assert [fields[b"r"] for _, fields in client.xrange(ingestion.STREAM_KEY)] == [b"req-first", b"req-second"]


def test_a_batch_that_cannot_be_written_is_logged_with_its_request_ids(staged, settings, caplog, monkeypatch):
    _, client = staged
    failures = metrics.INGEST_DRAIN_FAILURES._value.get()
    # PostgreSQL unreachable; fewer, quicker retries than production's so the test is short.
    monkeypatch.setattr(ingestion_drain, "write_with_retry", _quick_retry)
    db.init_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 1})
    try:
        with caplog.at_level(logging.ERROR, logger="services.ingestion.writer"):
            with pytest.raises(ingestion_writer.DatabaseUnavailable):
                ingestion_drain.drain(client, budget_s=5)
    finally:
        db.init_engine(settings.database_url)
    assert metrics.INGEST_DRAIN_FAILURES._value.get() == failures + 1
    message = next(r.getMessage() for r in caplog.records if "stays queued" in r.getMessage())
    assert "req-first" in message and "req-second" in message
    assert ingestion_drain.backlog(client).length == 2  # nothing was lost


def _quick_retry(records, **_):
    return ingestion_writer.with_retry(
        lambda pg: ingestion_writer.write_records(pg, records), "a batch", attempts=2, first_delay_s=0.01
    )


def test_persisted_events_are_counted_once(staged):
    experiment, client = staged
    click = metrics.EXPERIMENT_METRICS.labels(experiment_id=experiment["id"], event_type="click")
    conversion = metrics.EXPERIMENT_METRICS.labels(experiment_id=experiment["id"], event_type="conversion")
    before = (click._value.get(), conversion._value.get(), metrics.INGEST_DUPLICATES._value.get(),
              metrics.INGEST_INSERTED._value.get(), metrics.INGEST_DRAINED._value.get())
    report = ingestion_drain.drain(client, budget_s=5)
    assert report.as_dict()["inserted"] == 2
    after = (click._value.get(), conversion._value.get(), metrics.INGEST_DUPLICATES._value.get(),
             metrics.INGEST_INSERTED._value.get(), metrics.INGEST_DRAINED._value.get())
    assert [b - a for a, b in zip(before, after)] == [1, 1, 1, 2, 3]

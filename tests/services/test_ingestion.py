"""The write path: rollups equal a from-scratch aggregation, duplicates and redeliveries count
once, poison goes to dead letters, a PostgreSQL outage loses nothing, and reconcile repairs drift."""
from __future__ import annotations

import json
import random
import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from core import db
from core.config import libpq_url
from core.redis import get_redis
from services.ingestion import drain as ingestion_drain
from services.ingestion import rollups
from services.ingestion import staging as ingestion
from services.ingestion import writer as ingestion_writer
from services.ingestion.records import coerce_record
from tests.support.ingestion import assign_users, count_rows, drain_all, rollup_mismatches


@pytest.fixture
def redis_client(settings, app):
    return get_redis(settings.redis_url)


@pytest.fixture
def population(create_experiment, settings):
    """Two running experiments (2 and 3 arms) with 150 assigned users each."""
    three_arms = [
        {"name": "A", "traffic_share": 34, "is_control": True},
        {"name": "B", "traffic_share": 33},
        {"name": "C", "traffic_share": 33},
    ]
    experiments = [create_experiment(start=True), create_experiment(start=True, name="Three", variants=three_arms)]
    users = [f"user-{i}" for i in range(150)]
    held = {e["id"]: assign_users(settings, e, users) for e in experiments}
    return experiments, users, held


def make_record(experiment_id: str, variant_id: str, molam_id: str, event_type: str, value, event_id: str,
                occurred: datetime, currency: str | None = None) -> list:
    now, now_iso = ingestion.now_utc()
    event = {"molam_id": molam_id, "event_type": event_type, "value": value, "event_id": event_id,
             "occurred_at": occurred.isoformat(), "variant_id": variant_id}
    if currency is not None:
        event["currency"] = currency
    record, errors = ingestion.validate_event(
        event,
        experiment_id=experiment_id, received_at=now, received_iso=now_iso,
    )
    assert not errors, errors
    return record


def random_stream(population, rng: random.Random, n: int, duplicate_share: float = 0.2) -> tuple[list[list], set[str]]:
    experiments, users, held = population
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    records: list[list] = []
    for i in range(n):
        if records and rng.random() < duplicate_share:
            records.append(list(rng.choice(records)))  # a retry: same event id (and payload)
            continue
        experiment = rng.choice(experiments)
        molam_id = rng.choice(users)
        value = rng.choice([None, round(rng.uniform(-50, 500), 2), rng.randint(0, 3)])
        currency = rng.choice([None, None, "XOF", "EUR", "KWD"])
        if currency is not None:  # money: an exact amount with the currency's decimals
            value = {"XOF": rng.randint(100, 500_000), "EUR": round(rng.uniform(0, 500), 2),
                     "KWD": f"{rng.randint(0, 99_999) / 1000:.3f}"}[currency]
        records.append(make_record(
            experiment["id"], held[experiment["id"]][molam_id], molam_id,
            rng.choice(["conversion", "click", "view", "refund"]), value, f"ev-{i}",
            start + timedelta(seconds=rng.randint(0, 86400 * 10)), currency,
        ))
    return records, {r[0] for r in records}


def stage_in_random_chunks(client, records: list[list], rng: random.Random) -> None:
    position = 0
    while position < len(records):
        size = rng.choice([1, 1, 3, 50, 250, 1000])
        ingestion.stage(client, records[position:position + size])
        position += size


def test_randomised_stream_with_duplicates_matches_a_from_scratch_aggregation(population, redis_client, settings,
                                                                              monkeypatch):
    rng = random.Random(147)
    monkeypatch.setattr(ingestion_drain, "BATCH_EVENTS", 700)  # many transactions, users spanning them
    records, distinct = random_stream(population, rng, 6000)
    stage_in_random_chunks(redis_client, records, rng)
    totals = drain_all(redis_client)
    assert count_rows(settings, "experiment_metrics") == len(distinct)
    assert totals["inserted"] == len(distinct) and totals["duplicates"] == len(records) - len(distinct)
    assert rollup_mismatches(settings) == []
    # The stream is empty and nothing is left pending.
    backlog = ingestion_drain.backlog(redis_client)
    assert (backlog.length, backlog.pending) == (0, 0)


@pytest.mark.slow
def test_concurrent_drains_on_overlapping_users_stay_exact(population, redis_client, settings, monkeypatch):
    rng = random.Random(7)
    monkeypatch.setattr(ingestion_drain, "BATCH_EVENTS", 300)
    records, distinct = random_stream(population, rng, 8000, duplicate_share=0.3)
    stage_in_random_chunks(redis_client, records, rng)
    failures: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while ingestion_drain.drain(redis_client, consumer=name, budget_s=60).entries:
                pass
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(f"drainer-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert count_rows(settings, "experiment_metrics") == len(distinct)
    assert rollup_mismatches(settings) == []


def test_a_redelivered_batch_is_counted_once(population, redis_client, settings):
    records, distinct = random_stream(population, random.Random(3), 500, duplicate_share=0)
    coerced = [coerce_record(r) for r in records]
    first = ingestion_writer.write_with_retry(coerced)
    # The worker died after COMMIT but before XACK: the same entries come back.
    again = ingestion_writer.write_with_retry(coerced)
    assert (first.inserted, again.inserted, again.duplicates) == (500, 0, 500)
    assert count_rows(settings, "experiment_metrics") == 500
    assert rollup_mismatches(settings) == []


def test_entries_of_a_dead_consumer_are_claimed_and_written(population, redis_client, settings):
    records, distinct = random_stream(population, random.Random(5), 300, duplicate_share=0)
    ingestion.stage(redis_client, records)
    ingestion_drain.ensure_group(redis_client)
    # A consumer reads everything and dies without acknowledging.
    redis_client.xreadgroup(ingestion.GROUP, "dead-worker", {ingestion.STREAM_KEY: ">"}, count=100)
    assert ingestion_drain.backlog(redis_client).pending == 3
    report = ingestion_drain.drain(redis_client, consumer="survivor", claim_idle_ms=0)
    assert report.claimed == 3
    assert count_rows(settings, "experiment_metrics") == 300
    assert ingestion_drain.backlog(redis_client).length == 0
    assert rollup_mismatches(settings) == []


def test_poison_goes_to_dead_letters_and_neighbours_are_written(population, redis_client, settings):
    experiments, users, held = population
    first, second = experiments
    good = [make_record(first["id"], held[first["id"]][u], u, "conversion", 1.5, f"good-{u}",
                        datetime(2026, 11, 2, tzinfo=timezone.utc)) for u in users[:20]]
    # A variant of another experiment (e.g. a stale producer), and metadata PostgreSQL cannot parse.
    wrong_variant = list(good[0])
    wrong_variant[0], wrong_variant[2] = "poison-variant", second["variants"][0]["id"]
    bad_json = list(good[1])
    bad_json[0], bad_json[7] = "poison-json", "{not json"
    ingestion.stage(redis_client, good[:10] + [wrong_variant, bad_json] + good[10:])
    # Garbage written to the stream by something other than the API.
    redis_client.xadd(ingestion.STREAM_KEY, {"n": "1", "e": "this is not json"})
    redis_client.xadd(ingestion.STREAM_KEY, {"n": "2", "e": '[["short"], {"x": 1}]'})
    huge = list(good[2])
    huge[0], huge[5] = "poison-huge", 10**400
    redis_client.xadd(ingestion.STREAM_KEY, {"n": "1", "e": json.dumps([huge])})
    totals = drain_all(redis_client)
    assert count_rows(settings, "experiment_metrics") == 20
    assert totals["inserted"] == 20
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        dead = conn.execute("SELECT event_id, error FROM experiment_metric_dead_letters ORDER BY id").fetchall()
    errors = {event_id: error for event_id, error in dead}
    assert "is not a variant of experiment" in errors["poison-variant"]
    assert "poison-json" in errors and "json" in errors["poison-json"].lower()
    assert len(dead) == 6  # two poison events, one undecodable entry, three malformed records
    assert ingestion_drain.backlog(redis_client).length == 0
    assert rollup_mismatches(settings) == []


def test_postgres_outage_keeps_the_batch_pending_until_it_returns(population, redis_client, settings, monkeypatch):
    records, distinct = random_stream(population, random.Random(11), 200, duplicate_share=0)
    ingestion.stage(redis_client, records)
    # Fewer, shorter retries than production so the test stays quick (same code path).
    real_with_retry = ingestion_writer.with_retry
    monkeypatch.setattr(ingestion_writer, "with_retry",
                        lambda work, what, **_: real_with_retry(work, what, attempts=2, first_delay_s=0.05))
    db.init_engine("postgresql+psycopg://postgres@127.0.0.1:1/unreachable")
    try:
        with pytest.raises(ingestion_writer.DatabaseUnavailable):
            ingestion_drain.drain(redis_client, consumer="unlucky")
    finally:
        db.init_engine(settings.database_url)
    assert ingestion_drain.backlog(redis_client).pending == 2
    assert count_rows(settings, "experiment_metrics") == 0
    # The same consumer's next run starts with its own pending entries.
    ingestion_drain.drain(redis_client, consumer="unlucky")
    assert count_rows(settings, "experiment_metrics") == 200
    assert ingestion_drain.backlog(redis_client).length == 0
    assert rollup_mismatches(settings) == []


def test_reconcile_reports_and_repairs_drift(population, redis_client, settings, app):
    records, _ = random_stream(population, random.Random(13), 1500)
    stage_in_random_chunks(redis_client, records, random.Random(1))
    drain_all(redis_client)
    experiments = [e["id"] for e in population[0]]
    clean = rollups.reconcile(db.new_session, experiments)
    assert [d.total for d in clean] == [0, 0] and not any(d.repaired for d in clean)

    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        conn.execute("UPDATE experiment_variant_rollups SET events = events + 1, value_sum = value_sum * 1.01 "
                     "WHERE ctid = (SELECT ctid FROM experiment_variant_rollups LIMIT 1)")
        conn.execute("DELETE FROM experiment_user_rollups WHERE ctid IN "
                     "(SELECT ctid FROM experiment_user_rollups WHERE experiment_id = %s LIMIT 3)", (experiments[0],))
        conn.execute("UPDATE experiment_user_money_rollups SET amount_minor = amount_minor + 1 "
                     "WHERE ctid = (SELECT ctid FROM experiment_user_money_rollups LIMIT 1)")
    assert rollup_mismatches(settings) != []

    dry = app.test_cli_runner().invoke(args=["sira", "reconcile", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "found drift" in dry.output and "3 missing" in dry.output
    assert "money rollups 0 missing, 0 extra, 1 differ" in dry.output
    assert rollup_mismatches(settings) != []

    result = app.test_cli_runner().invoke(args=["sira", "reconcile", "--experiment", experiments[0]])
    assert result.exit_code == 0, result.output
    assert "repaired drift" in result.output
    result = app.test_cli_runner().invoke(args=["sira", "reconcile"])
    assert "repaired drift" in result.output or "0 with drift" in result.output
    assert rollup_mismatches(settings) == []
    final = app.test_cli_runner().invoke(args=["sira", "reconcile"])
    assert "2 experiment(s) checked, 0 with drift" in final.output

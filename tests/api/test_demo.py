"""``seed-demo``: three running experiments and simulated users through the API's own routes."""
from __future__ import annotations

import json

import pytest

from api import cli_demo
from core.redis import get_redis
from services.ingestion import staging
from services.ingestion.records import StagedEvent
from tests.support.ingestion import count_rows


@pytest.fixture
def demo_api(client, make_token):
    def send(method, path, body, headers):
        response = client.open(path, method=method, json=body, headers=headers)
        return response.status_code, response.get_json()

    return cli_demo.ApiClient("http://test", make_token("ops_admin"), make_token("demo_module"), send=send)


def staged_events(settings) -> list[list]:
    events = []
    for _, fields in get_redis(settings.redis_url).xrange(staging.STREAM_KEY):
        events.extend(json.loads(fields[b"e"]))
    return events


def test_demo_creates_three_experiments_and_drives_users(demo_api, client, auth, settings):
    reports: list[bool] = []
    tally = cli_demo.run_demo(demo_api, minutes=0.05, users_per_second=8, seed=7, workers=1,
                              request_reports=lambda: reports.append(True))
    assert reports == [True]  # once, at the end of a run shorter than REPORT_AFTER_S
    assert tally["users"] > 0 and tally["errors"] == 0 and tally["ineligible"] == 0
    listed = client.get("/api/experiments?status=running", headers=auth()).get_json()
    by_name = {e["name"]: e for e in listed}
    assert set(by_name) == {d.name for d in cli_demo.DEMO_EXPERIMENTS}
    assert by_name[cli_demo.DEMO_EXPERIMENTS[1].name]["mode"] == "bandit"
    assert len(by_name[cli_demo.DEMO_EXPERIMENTS[1].name]["variants"]) == 3
    assert count_rows(settings, "experiment_assignments") == tally["assignments"] == 3 * tally["users"]

    events = staged_events(settings)
    assert len(events) == tally["events"]
    assert {e[4] for e in events} >= {"view"}
    views = [e for e in events if e[4] == "view"]
    assert len(views) == tally["assignments"]  # every assigned user views once
    money = by_name[cli_demo.DEMO_EXPERIMENTS[2].name]["id"]
    for raw in events:
        event = StagedEvent(*raw)
        if event.experiment_id == money and event.event_type == "conversion":
            # Money is staged exactly, in the currency's minor units (the API refused any
            # amount with more decimals than the currency has).
            assert event.currency in cli_demo.DEMO_EXPERIMENTS[2].currencies
            assert isinstance(event.amount_minor, int) and event.amount_minor > 0 and event.value is None
        else:
            assert event.amount_minor is None and event.currency is None

    # A second run reuses the running experiments.
    cli_demo.run_demo(demo_api, minutes=0.02, users_per_second=2, seed=8, workers=1)
    assert len(client.get("/api/experiments?status=running", headers=auth()).get_json()) == 3


def test_amounts_respect_the_currency_decimals():
    import random

    rng = random.Random(1)
    for _ in range(200):
        assert isinstance(cli_demo.amount(rng, 6500.0, 0), int)
        eur = cli_demo.amount(rng, 9.9, 2)
        assert round(eur, 2) == eur and eur > 0


def test_seed_demo_refuses_without_tokens_against_molam_id(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["seed-demo", "--minutes", "0.05"])
    assert result.exit_code != 0 and "--admin-token" in result.output

"""The Python client against the real API over HTTP: definitions, local answers equal to
the server's, the change stream, exposure upload into results, bandits and paused arms."""
from __future__ import annotations

import time

import pytest

from molam_experiments import Client

SERVICE = "pay_module"
_HEADERS: dict[str, dict[str, str]] = {}


def _server_assign(client, auth, experiment_id, molam_id, **context):
    # Minting a token costs ~25 ms: one per test session.
    headers = _HEADERS.setdefault(SERVICE, auth(SERVICE))
    response = client.post(f"/api/experiments/{experiment_id}/assign", json={"molam_id": molam_id, **context},
                           headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


UNEVEN = [
    {"name": "control", "config": {"price": 100}, "traffic_share": 33.33, "is_control": True},
    {"name": "discount", "config": {"price": 90}, "traffic_share": 50.17},
    {"name": "premium", "config": {"price": 120}, "traffic_share": 16.5},
]


@pytest.fixture
def sdk(live_api, service_token):
    clients = []

    def make(**options):
        options.setdefault("refresh", "stream")
        created = Client(live_api, service_token, **options)
        clients.append(created)
        return created

    yield make
    for created in clients:
        created.close(timeout_s=2)


def test_local_answers_equal_the_server_and_exposures_reach_results(client, auth, create_experiment, sdk):
    experiment = create_experiment(start=True, coverage=70, variants=UNEVEN,
                                   targeting={"country": ["SN", "CI"], "min_txn": 2})
    sdk_client = sdk()
    assert sdk_client.status()["ready"] and sdk_client.status()["definitions"]["source"] == "server"
    users = [f"pay-user-{i}" for i in range(200)]
    local = {u: sdk_client.assign(experiment["id"], u, country="SN", txn_count=5) for u in users}
    assert {a.source for a in local.values()} == {"local"}
    assert {a.reason for a in local.values() if not a.eligible} == {"outside_coverage"}
    eligible = {u: a for u, a in local.items() if a.eligible}
    assert 100 < len(eligible) < 180
    assert sdk_client.flush(timeout_s=10)
    assert sdk_client.status()["exposures"]["sent"] == len(eligible)
    results = client.get(f"/api/experiments/{experiment['id']}/results", headers=auth("ops_admin")).get_json()
    counts = {v["variant_id"]: v["assigned_users"] for v in results["variants"]}
    assert counts == {v["id"]: sum(a.variant_id == v["id"] for a in eligible.values()) for v in experiment["variants"]}
    for user in users:
        server = _server_assign(client, auth, experiment["id"], user, country="SN", txn_count=5)
        mine = local[user]
        assert mine.eligible == server["eligible"], user
        if server["eligible"]:
            assert (mine.variant_id, mine.variant_name, mine.is_control, mine.config) == (
                server["variant_id"], server["variant_name"], server["is_control"], server["config"])
            assert server["new"] is False  # stored by the exposure upload
        else:
            assert mine.reason == server["reason"]


def test_stop_reaches_the_client_within_a_second(client, auth, create_experiment, sdk):
    experiment = create_experiment(start=True, targeting={})
    sdk_client = sdk()
    assert sdk_client.experiment(experiment["id"]) is not None
    assert _wait(lambda: sdk_client.status()["refresh"]["stream_connected"], 5)
    stopped = client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin"))
    assert stopped.status_code == 200
    t0 = time.monotonic()
    assert _wait(lambda: sdk_client.experiment(experiment["id"]) is None, 5)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"stop visible after {elapsed:.3f} s"
    answer = sdk_client.assign(experiment["id"], "u1")
    assert not answer.eligible and answer.reason == "not_running"
    restarted = client.post(f"/api/experiments/{experiment['id']}/start", headers=auth("ops_admin"))
    assert restarted.status_code == 200
    assert _wait(lambda: sdk_client.experiment(experiment["id"]) is not None, 5)


def test_polling_mode_picks_up_changes(client, auth, create_experiment, sdk):
    experiment = create_experiment(start=True, targeting={})
    sdk_client = sdk(refresh=0.2)
    assert sdk_client.experiment(experiment["id"]) is not None
    client.post(f"/api/experiments/{experiment['id']}/stop", headers=auth("ops_admin"))
    assert _wait(lambda: sdk_client.experiment(experiment["id"]) is None, 5)
    assert sdk_client.status()["refresh"] == {"mode": "poll", "interval_s": 0.2, "stream_connected": False}


def test_paused_arm_users_go_to_the_server_and_get_their_stored_variant(client, auth, create_experiment, sdk):
    experiment = create_experiment(start=True, targeting={}, variants=UNEVEN)
    control = experiment["variants"][0]["id"]
    users = [f"held-{i}" for i in range(80)]
    before = {u: _server_assign(client, auth, experiment["id"], u)["variant_id"] for u in users}
    client.post(f"/api/experiments/{experiment['id']}/variants/{control}/pause", headers=auth("ops_admin"))
    sdk_client = sdk()
    fresh = [f"fresh-{i}" for i in range(80)]
    answers = {u: sdk_client.assign(experiment["id"], u) for u in users + fresh}
    assert {answers[u].variant_id for u in users} <= set(before.values())
    for user in users:
        assert answers[user].variant_id == before[user], user  # sticky, even in the paused arm
    for user in fresh:
        assert answers[user].variant_id != control
    sources = {a.source for a in answers.values()}
    assert sources == {"local", "server"}
    assert sdk_client.flush(timeout_s=10)
    assert sdk_client.status()["exposures"]["rejected"] == {}
    for user in fresh:
        server = _server_assign(client, auth, experiment["id"], user)
        assert server["variant_id"] == answers[user].variant_id


def test_bandits_and_targeting_misses_are_decided_by_the_server(client, auth, create_experiment, sdk):
    bandit = create_experiment(start=True, mode="bandit", targeting={}, name="bandit")
    targeted = create_experiment(start=True, targeting={"country": ["SN"]}, name="targeted")
    held = _server_assign(client, auth, targeted["id"], "traveller", country="SN")
    sdk_client = sdk()
    answer = sdk_client.assign(bandit["id"], "b1")
    assert answer.source == "server" and answer.eligible and answer.new is True
    again = sdk_client.assign(bandit["id"], "b1")
    assert again.variant_id == answer.variant_id and again.new is False
    # The user now sends another country: the server keeps them in their variant.
    moved = sdk_client.assign(targeted["id"], "traveller", country="FR")
    assert moved.source == "server" and moved.eligible and moved.variant_id == held["variant_id"]
    newcomer = sdk_client.assign(targeted["id"], "newcomer", country="FR")
    assert not newcomer.eligible and newcomer.reason == "country_not_targeted"
    fast = sdk(exact_targeting_misses=False)
    quick = fast.assign(targeted["id"], "traveller", country="FR")
    assert quick.source == "local" and quick.reason == "country_not_targeted"


def test_track_flushes_the_pending_exposure_and_is_idempotent(client, auth, create_experiment, sdk):
    experiment = create_experiment(start=True, targeting={})
    sdk_client = sdk(exposure_flush_interval_s=60)
    answer = sdk_client.assign(experiment["id"], "buyer")
    assert answer.eligible and sdk_client.status()["exposures"]["queued"] == 1
    accepted = sdk_client.track(experiment["id"], "buyer", "conversion", value=4999, currency="XOF", event_id="evt-1")
    assert accepted == {"event_id": "evt-1", "status": "queued"}
    assert sdk_client.track(experiment["id"], "buyer", "conversion", event_id="evt-1")["event_id"] == "evt-1"
    batch = sdk_client.track_batch([
        {"experiment_id": experiment["id"], "molam_id": "buyer", "event_type": "click"},
        {"experiment_id": experiment["id"], "molam_id": "nobody", "event_type": "click"},
    ])
    assert len(batch["accepted"]) == 1 and [r["index"] for r in batch["rejected"]] == [1]

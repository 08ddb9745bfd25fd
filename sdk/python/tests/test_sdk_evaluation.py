"""Local evaluation and the client's contract without a server (bootstrap definitions)."""
from __future__ import annotations

import json
import socket

import pytest

from molam_experiments import Assignment, Client, DefinitionError
from molam_experiments.evaluation import Experiment, compile_document, decide, split_bucket

EXPERIMENT = {
    "id": "6f1c2a8e-4b7d-4c3e-9a1f-2d5e8b0c7a91", "version": 2, "status": "running", "mode": "ab",
    "evaluation": "local", "coverage": 100.0, "targeting": {"country": ["SN"]},
    "variants": [
        {"id": "a", "name": "control", "is_control": True, "config": {"c": 1}, "share": 50.0, "paused": False},
        {"id": "b", "name": "green", "is_control": False, "config": {"c": 2}, "share": 50.0, "paused": False},
    ],
    "server_buckets": [], "bandit_weights": None,
}


def _document(*experiments):
    return {"format": 1, "buckets": 10_000, "experiments": list(experiments)}


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def offline(tmp_path):
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps(_document(EXPERIMENT, {**EXPERIMENT, "id": "bandit", "mode": "bandit"})))
    client = Client(_dead_url(), "token", refresh=3600, bootstrap_path=path, start_timeout_s=0.2, timeout_s=0.2)
    yield client
    client.close(timeout_s=0.2)


def test_unknown_fields_from_a_newer_server_send_the_experiment_to_the_server():
    assert Experiment(EXPERIMENT).is_local
    assert not Experiment({**EXPERIMENT, "layer": {"id": "l", "start": 0, "end": 5000}}).is_local
    assert not Experiment({**EXPERIMENT, "holdouts": [{"id": "h", "percent": 5}]}).is_local
    assert not Experiment({**EXPERIMENT, "mode": "bandit"}).is_local


def test_documents_this_client_cannot_read_are_refused():
    with pytest.raises(DefinitionError):
        compile_document({"format": 2, "buckets": 10_000, "experiments": []})
    with pytest.raises(DefinitionError):
        compile_document({"format": 1, "buckets": 1_000, "experiments": []})
    with pytest.raises(DefinitionError):
        compile_document(_document({"id": "x"}))


def test_server_buckets_route_exactly_their_users():
    experiment = Experiment({**EXPERIMENT, "targeting": {}, "server_buckets": [[0, 2500], [9000, 10000]]})
    for n in range(500):
        molam_id = f"u{n}"
        bucket = split_bucket(experiment.id, molam_id)
        assert decide(experiment, molam_id, {}).server_required == (bucket < 2500 or bucket >= 9000)


def test_local_answers_have_the_server_shape(offline):
    answer = offline.assign(EXPERIMENT["id"], "user-1", country="SN")
    assert answer.source == "local" and answer.eligible
    assert set(answer.as_dict()) == {"experiment_id", "molam_id", "eligible", "variant_id", "variant_name",
                                     "is_control", "config", "assigned_at", "new"}
    assert offline.assign("not-there", "user-1").as_dict() == {
        "experiment_id": "not-there", "molam_id": "user-1", "eligible": False, "variant_id": None, "reason": "not_running"}


def test_answers_needing_the_server_degrade_to_unavailable(offline):
    assert offline.assign("bandit", "u").reason == "unavailable"
    # A targeting miss may hide a stored assignment: the server decides, here unreachable.
    assert offline.assign(EXPERIMENT["id"], "u", country="FR").reason == "unavailable"
    assert offline.status()["server_assign"]["errors"] == 2


def test_invalid_arguments_raise(offline):
    with pytest.raises(ValueError):
        offline.assign(EXPERIMENT["id"], "")
    with pytest.raises(TypeError):
        offline.assign(EXPERIMENT["id"], "u", colour="red")
    with pytest.raises(TypeError):
        offline.assign(EXPERIMENT["id"], "u", txn_count="3")
    with pytest.raises(TypeError):
        offline.assign(EXPERIMENT["id"], "u", country=7)


def test_assignment_is_immutable():
    answer = Assignment("e", "u", False, reason="not_running")
    with pytest.raises(AttributeError):
        answer.eligible = True  # type: ignore[misc]

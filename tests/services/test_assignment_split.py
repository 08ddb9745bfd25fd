"""Pure parts of the assignment service: the documented hash, the split, bandit weights."""
from __future__ import annotations

import hashlib

import pytest

from services.experiments import assignment as service
from services.experiments.buckets import coverage_bucket, split_bucket
from services.experiments.definitions import definition_from_document
from sira.bandit import draw_arm

EXPERIMENT_ID = "6f1c2a7e-0000-4000-8000-000000000001"


def definition(shares, paused=(), mode="ab", coverage=100.0, targeting=None):
    return definition_from_document(
        {
            "id": EXPERIMENT_ID,
            "status": "running",
            "mode": mode,
            "coverage": coverage,
            "targeting": targeting or {},
            "version": 1,
            "bandit": {"min_samples": 100, "floor": 0.01},
            "variants": [
                {"id": f"v{i}", "name": f"v{i}", "config": {}, "is_control": i == 0, "traffic_share": share, "paused": i in paused}
                for i, share in enumerate(shares)
            ],
        }
    )


def test_bucket_is_the_documented_sha256_formula():
    for molam_id in ("user_123", "é-ünïcode", "x" * 200):
        digest = hashlib.sha256(f"{EXPERIMENT_ID}:{molam_id}".encode()).digest()
        assert split_bucket(EXPERIMENT_ID, molam_id) == int.from_bytes(digest[:8], "big") % 10_000
        digest = hashlib.sha256(f"coverage:{EXPERIMENT_ID}:{molam_id}".encode()).digest()
        assert coverage_bucket(EXPERIMENT_ID, molam_id) == int.from_bytes(digest[:8], "big") % 10_000
    # A fixed vector, so a change of formula cannot go unnoticed.
    assert split_bucket(EXPERIMENT_ID, "user_123") == 5389
    assert coverage_bucket(EXPERIMENT_ID, "user_123") == 5562


def test_split_boundaries_are_exact_hundredths():
    bounds, active = service.split_boundaries(definition([50, 30, 12.5, 7.5]))
    assert bounds == (5000, 8000, 9250, 10_000)
    assert [v.id for v in active] == ["v0", "v1", "v2", "v3"]
    d = definition([50, 30, 12.5, 7.5])
    chosen = [service.variant_for_bucket(d, b).id for b in range(10_000)]
    assert [chosen.count(f"v{i}") for i in range(4)] == [5000, 3000, 1250, 750]


def test_zero_share_arm_gets_nobody():
    d = definition([100, 0])
    assert {service.variant_for_bucket(d, b).id for b in range(10_000)} == {"v0"}


def test_paused_arms_are_skipped_and_the_rest_renormalised():
    d = definition([40, 30, 30], paused={1})
    chosen = [service.variant_for_bucket(d, b).id for b in range(10_000)]
    assert "v1" not in chosen
    assert chosen.count("v0") == 40 * 10_000 // 70


def test_only_zero_share_arms_left_split_evenly():
    d = definition([100, 0, 0], paused={0})
    chosen = [service.variant_for_bucket(d, b).id for b in range(10_000)]
    assert chosen.count("v1") == chosen.count("v2") == 5000


def test_coverage_threshold():
    assert all(service.in_coverage(definition([50, 50], coverage=100), f"u{n}") for n in range(100))
    d = definition([50, 50], coverage=0.01)
    inside = [m for m in (f"u{n}" for n in range(50_000)) if service.in_coverage(d, m)]
    assert all(coverage_bucket(EXPERIMENT_ID, m) == 0 for m in inside)


def test_bandit_weights_prefer_published_after_burn_in():
    d = definition([50, 50], mode="bandit")
    published = {"weights": {"v0": 0.2, "v1": 0.8}, "burn_in": False}
    assert [(v.id, w) for v, w in service.draw_weights(d, published)[0]] == [("v0", 0.2), ("v1", 0.8)]
    assert [w for _, w in service.draw_weights(d, {**published, "burn_in": True})[0]] == [5000.0, 5000.0]
    assert [w for _, w in service.draw_weights(d, None)[0]] == [5000.0, 5000.0]


@pytest.mark.parametrize(
    "weights", [{"v0": "nan", "v1": float("inf")}, {"v0": -1, "v1": 0}, {"v0": None, "v1": "x"}, {}, {"other": 1.0}]
)
def test_bandit_weights_ignore_garbage(weights):
    d = definition([30, 70], mode="bandit")
    assert [w for _, w in service.draw_weights(d, {"weights": weights, "burn_in": False})[0]] == [3000.0, 7000.0]


def test_paused_arm_gets_no_bandit_draws():
    d = definition([50, 50], paused={0}, mode="bandit")
    weighted = service.draw_weights(d, {"weights": {"v0": 0.99, "v1": 0.01}, "burn_in": False})[0]
    assert [v.id for v, _ in weighted] == ["v1"]


def test_draw_arm_maps_the_unit_interval_onto_weights():
    d = definition([50, 50, 0])
    weights = (1.0, 3.0, 0.0)
    points = iter([0.0, 0.2499, 0.25, 0.9999999])
    assert [d.variants[draw_arm(weights, lambda: next(points))].id for _ in range(4)] == ["v0", "v0", "v1", "v1"]


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        (service.UserContext("u", country="SN", txn_count=3), None),
        (service.UserContext("u", country="FR", txn_count=3), "country_not_targeted"),
        (service.UserContext("u", txn_count=3), "country_missing"),
        (service.UserContext("u", country="SN", txn_count=2), "below_min_txn"),
        (service.UserContext("u", country="SN"), "txn_count_missing"),
    ],
)
def test_targeting_reason(user, reason):
    d = definition([50, 50], targeting={"country": ["SN"], "min_txn": 3})
    assert service.targeting_reason(d, user) == reason


def test_parsed_definitions_are_memoised_by_bytes():
    from services.experiments.definitions import encode_definition, parse_definition

    raw = encode_definition({"id": "x", "status": "running", "mode": "ab", "coverage": 100, "variants": []})
    assert parse_definition(raw) is parse_definition(bytes(raw))
    changed = raw.replace(b"running", b"stopped")
    assert parse_definition(changed).status == "stopped"

"""Statistical checks: the fixed split, coverage and bandit draws follow their targets.

Each test uses a fixed set of synthetic molam_ids, so with the deterministic hash the
outcome of the split tests is reproducible for a given experiment id; experiment ids
are random, so over many runs these are genuine tests at the 0.001 level.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
from scipy import stats

from core.redis import get_redis
from services.cache import weights_key
from services.experiments import assignment as service
from services.experiments.buckets import split_bucket
from services.experiments.definitions import load_definition

USERS = 20_000
ALPHA = 0.001


def _assign_directly(settings, experiment_id: str, molam_ids: list[str]) -> list[dict]:
    """The service function the endpoint calls, without HTTP (the API is covered below)."""
    client = get_redis(settings.redis_url)
    return [service.assign(client, experiment_id, service.UserContext(molam_id=m)) for m in molam_ids]


def test_fixed_split_matches_traffic_shares(client, auth, create_experiment, settings):
    variants = [
        {"name": "control", "traffic_share": 50, "is_control": True},
        {"name": "b", "traffic_share": 30},
        {"name": "c", "traffic_share": 12.5},
        {"name": "d", "traffic_share": 7.5},
    ]
    experiment = create_experiment(start=True, targeting={}, variants=variants)
    definition = load_definition(experiment["id"])
    shares = np.array([v["traffic_share"] for v in experiment["variants"]]) / 100
    ids = [v["id"] for v in experiment["variants"]]

    # 20,000 users through the decision function that assign uses for new users...
    chosen = Counter(service.variant_for_bucket(definition, split_bucket(definition.id, f"syn-{n}")).id for n in range(USERS))
    observed = np.array([chosen[i] for i in ids])
    assert stats.chisquare(observed, shares * USERS).pvalue > ALPHA

    # ...and a slice of them through the service and the API, which must store exactly
    # what that function says (so the stored split is the one tested above).
    through_service = _assign_directly(settings, experiment["id"], [f"syn-{n}" for n in range(1000)])
    headers = auth("pay_module", sub="split-svc")
    through_api = [
        client.post(f"/api/experiments/{experiment['id']}/assign", json={"molam_id": f"syn-{n}"}, headers=headers).get_json()
        for n in range(1000, 1200)
    ]
    for n, answer in enumerate(through_service + through_api):
        assert answer["new"] is True
        expected = service.variant_for_bucket(definition, split_bucket(definition.id, f"syn-{n}")).id
        assert answer["variant_id"] == expected
    stored = Counter(a["variant_id"] for a in through_service + through_api)
    assert stats.chisquare([stored[i] for i in ids], shares * 1200).pvalue > ALPHA


def test_coverage_within_tolerance_and_independent_of_variant(create_experiment, settings):
    experiment = create_experiment(start=True, targeting={}, coverage=30)
    definition = load_definition(experiment["id"])
    enrolled = np.array([service.in_coverage(definition, f"cov-{n}") for n in range(USERS)])
    # Binomial sd at p = 0.3, n = 20,000 is 0.0032: allow ~4.7 sd.
    assert abs(enrolled.mean() - 0.30) < 0.015
    variant = np.array([service.variant_for_bucket(definition, split_bucket(definition.id, f"cov-{n}")).is_control for n in range(USERS)])
    table = [[np.sum(enrolled & variant), np.sum(enrolled & ~variant)], [np.sum(~enrolled & variant), np.sum(~enrolled & ~variant)]]
    assert stats.chi2_contingency(table).pvalue > ALPHA

    answers = _assign_directly(settings, experiment["id"], [f"cov-{n}" for n in range(1000)])
    assert [a["eligible"] for a in answers] == list(enrolled[:1000])
    assert {a["reason"] for a in answers if not a["eligible"]} == {"outside_coverage"}


def test_bandit_draws_follow_published_weights(create_experiment, settings):
    variants = [
        {"name": "control", "traffic_share": 34, "is_control": True},
        {"name": "b", "traffic_share": 33},
        {"name": "c", "traffic_share": 33},
    ]
    experiment = create_experiment(start=True, targeting={}, mode="bandit", variants=variants)
    ids = [v["id"] for v in experiment["variants"]]
    weights = {ids[0]: 0.6, ids[1]: 0.3, ids[2]: 0.1}
    get_redis(settings.redis_url).set(
        weights_key(experiment["id"]), json.dumps({"weights": weights, "burn_in": False, "computed_at": "2026-01-01T00:00:00+00:00"})
    )
    answers = _assign_directly(settings, experiment["id"], [f"bandit-{n}" for n in range(1500)])
    counts = Counter(a["variant_id"] for a in answers)
    assert stats.chisquare([counts[i] for i in ids], [weights[i] * 1500 for i in ids]).pvalue > ALPHA


def test_bandit_uses_shares_during_burn_in(create_experiment, settings):
    variants = [
        {"name": "control", "traffic_share": 70, "is_control": True},
        {"name": "b", "traffic_share": 30},
    ]
    experiment = create_experiment(start=True, targeting={}, mode="bandit", variants=variants)
    ids = [v["id"] for v in experiment["variants"]]
    # SIRA is still in burn-in: its weights must be ignored in favour of the shares.
    get_redis(settings.redis_url).set(weights_key(experiment["id"]), json.dumps({"weights": {ids[0]: 0.0, ids[1]: 1.0}, "burn_in": True}))
    answers = _assign_directly(settings, experiment["id"], [f"burn-{n}" for n in range(600)])
    counts = Counter(a["variant_id"] for a in answers)
    assert stats.chisquare([counts[i] for i in ids], [420, 180]).pvalue > ALPHA


def test_bandit_without_published_weights_draws_by_shares(create_experiment, settings):
    variants = [
        {"name": "control", "traffic_share": 20, "is_control": True},
        {"name": "b", "traffic_share": 80},
    ]
    experiment = create_experiment(start=True, targeting={}, mode="bandit", variants=variants)
    ids = [v["id"] for v in experiment["variants"]]
    answers = _assign_directly(settings, experiment["id"], [f"cold-{n}" for n in range(600)])
    counts = Counter(a["variant_id"] for a in answers)
    assert stats.chisquare([counts[i] for i in ids], [120, 480]).pvalue > ALPHA

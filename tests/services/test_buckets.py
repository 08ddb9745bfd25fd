"""The documented hashes: fixed vectors an SDK can check against, independence, purity."""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
from scipy import stats

from services.experiments import buckets

ID = "7c6f0b2e-1f1a-4b8e-9d3c-2a5b6c7d8e9f"


def _reference(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10_000


def test_vectors_and_the_formula():
    assert (buckets.split_bucket(ID, "user_123"), buckets.coverage_bucket(ID, "user_123")) == (3906, 4869)
    assert (buckets.layer_bucket(ID, "user_123"), buckets.holdout_bucket(ID, "user_123")) == (9824, 8527)
    for n in range(200):
        molam_id = f"m-{n}-é"
        assert buckets.layer_bucket(ID, molam_id) == _reference(f"layer:{ID}:{molam_id}")
        assert buckets.holdout_bucket(ID, molam_id) == _reference(f"holdout:{ID}:{molam_id}")


def test_ranges_and_percentages():
    assert buckets.percent_to_buckets(12.34) == 1234 and buckets.percent_to_buckets(100) == 10_000
    molam_id = "user_123"
    assert buckets.in_layer_range(ID, molam_id, 9824, 9825) and not buckets.in_layer_range(ID, molam_id, 0, 9824)
    assert buckets.in_holdout(ID, 85.28, molam_id) and not buckets.in_holdout(ID, 85.27, molam_id)


def test_layer_and_holdout_placement_are_independent_of_the_split():
    users = [f"u{n}" for n in range(20_000)]
    layer = np.array([buckets.layer_bucket(ID, m) < 5000 for m in users])
    holdout = np.array([buckets.holdout_bucket(ID, m) < 5000 for m in users])
    split = np.array([buckets.split_bucket(ID, m) < 5000 for m in users])
    for a, b in ((layer, holdout), (layer, split), (holdout, split)):
        table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
        assert stats.chi2_contingency(table).pvalue > 1e-4


def test_the_module_is_pure_standard_library():
    tree = ast.parse(Path(buckets.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "hashlib"}

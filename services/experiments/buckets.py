"""Every hash that places a Molam ID, in one pure module (standard library only).

Client SDKs replicate these functions to evaluate experiments locally, so each one
is specified exactly here and in docs/assignment.md, and nothing in this module may
depend on anything but its arguments::

    bucket(key) = int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big") % 10_000

    split_bucket(experiment_id, molam_id)    = bucket(f"{experiment_id}:{molam_id}")
    coverage_bucket(experiment_id, molam_id) = bucket(f"coverage:{experiment_id}:{molam_id}")
    layer_bucket(layer_id, molam_id)         = bucket(f"layer:{layer_id}:{molam_id}")
    holdout_bucket(holdout_id, molam_id)     = bucket(f"holdout:{holdout_id}:{molam_id}")

Ids are the canonical lower-case hyphenated UUID strings. The prefixes keep the four
hashes independent of one another: a user's place in a layer says nothing about
their variant, and their holdout membership nothing about either.

* A layer's 10,000 buckets are divided among its running experiments: each owns a
  half-open range ``[start, end)``; a user is in the experiment's share of the layer
  when ``start <= layer_bucket < end``.
* A holdout of ``percent`` keeps the users with ``holdout_bucket < round(percent * 100)``.
"""
from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % BUCKETS


def split_bucket(experiment_id: str, molam_id: str) -> int:
    return bucket(f"{experiment_id}:{molam_id}")


def coverage_bucket(experiment_id: str, molam_id: str) -> int:
    return bucket(f"coverage:{experiment_id}:{molam_id}")


def layer_bucket(layer_id: str, molam_id: str) -> int:
    return bucket(f"layer:{layer_id}:{molam_id}")


def holdout_bucket(holdout_id: str, molam_id: str) -> int:
    return bucket(f"holdout:{holdout_id}:{molam_id}")


def percent_to_buckets(percent: float) -> int:
    """A percentage (two decimals) as a number of buckets: 12.34 % -> 1,234 buckets."""
    return int(round(percent * 100))


def in_layer_range(layer_id: str, molam_id: str, start: int, end: int) -> bool:
    return start <= layer_bucket(layer_id, molam_id) < end


def in_holdout(holdout_id: str, percent: float, molam_id: str) -> bool:
    return holdout_bucket(holdout_id, molam_id) < percent_to_buckets(percent)

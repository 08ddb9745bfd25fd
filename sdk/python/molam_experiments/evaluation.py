"""Local evaluation of fixed splits: the server's documented hash, targeting and split.

Pure functions over the document ``GET /api/sdk/definitions`` serves. Every rule
here is the server's (``docs/assignment.md``), checked bit for bit against vectors the
server's own code generated (``tests/vectors.json``):

    bucket(key)     = int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big") % 10_000
    split bucket    = bucket(f"{experiment_id}:{molam_id}")
    coverage bucket = bucket(f"coverage:{experiment_id}:{molam_id}")

Order of checks: targeting lists (``country``, ``lang``, ``currency``, ``region``,
``device``: a whitelist; an omitted attribute cannot match), ``min_txn``, coverage
(``coverage bucket < round(coverage * 100)``), then the arm whose slice of the
cumulative shares of the *unpaused* arms (renormalised: bound_i = cumulative_i *
10,000 // total, shares in hundredths of a percent) contains the split bucket.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import Any

BUCKETS = 10_000
FORMAT = 1
TARGETING_LIST_KEYS = ("country", "lang", "currency", "region", "device")
CONTEXT_KEYS = frozenset(TARGETING_LIST_KEYS + ("txn_count",))


def bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % BUCKETS


def split_bucket(experiment_id: str, molam_id: str) -> int:
    return bucket(f"{experiment_id}:{molam_id}")


def coverage_bucket(experiment_id: str, molam_id: str) -> int:
    return bucket(f"coverage:{experiment_id}:{molam_id}")


def _hundredths(value: float) -> int:
    return int(round(value * 100))


@dataclass(frozen=True, slots=True)
class Variant:
    id: str
    name: str
    is_control: bool
    config: dict[str, Any]
    share: float
    paused: bool


class DefinitionError(ValueError):
    """The definitions document is not one this client understands."""


class Experiment:
    """One experiment compiled for evaluation: thresholds, bounds and ranges precomputed."""

    __slots__ = (
        "id", "version", "mode", "evaluation", "coverage", "targeting", "variants", "by_id",
        "_coverage_threshold", "_lists", "_min_txn", "_bounds", "_active", "_server_ranges",
        "bandit_weights",
    )

    def __init__(self, document: dict[str, Any]):
        try:
            self.id = str(document["id"])
            self.version = int(document["version"])
            self.mode = str(document["mode"])
            self.evaluation = str(document.get("evaluation", "server"))
            self.coverage = float(document["coverage"])
            self.targeting = dict(document.get("targeting") or {})
            self.variants = tuple(
                Variant(
                    id=str(v["id"]), name=str(v["name"]), is_control=bool(v["is_control"]),
                    config=v.get("config") or {}, share=float(v["share"]), paused=bool(v["paused"]),
                )
                for v in document["variants"]
            )
            ranges = tuple((int(lo), int(hi)) for lo, hi in document.get("server_buckets") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise DefinitionError(f"malformed experiment definition: {exc!r}") from exc
        self.bandit_weights = document.get("bandit_weights")
        self.by_id = {v.id: v for v in self.variants}
        self._coverage_threshold = _hundredths(self.coverage)
        self._lists = tuple(
            (key, frozenset(self.targeting[key])) for key in TARGETING_LIST_KEYS if self.targeting.get(key)
        )
        self._min_txn = self.targeting.get("min_txn") or None
        self._server_ranges = ranges
        self._active = tuple(v for v in self.variants if not v.paused)
        shares = [_hundredths(v.share) for v in self._active]
        if self._active and sum(shares) <= 0:
            shares = [1] * len(self._active)  # every unpaused arm at 0 %: an even split
        total = sum(shares)
        bounds, running = [], 0
        for share in shares:
            running += share
            bounds.append(running * BUCKETS // total)
        self._bounds = tuple(bounds)
        # Anything this client cannot evaluate exactly (a bandit, a field from a newer
        # server such as a layer or holdouts) is left to the server.
        if self.mode != "ab" or not self._active or any(document.get(k) for k in ("layer", "holdouts")):
            self.evaluation = "server"

    @property
    def is_local(self) -> bool:
        return self.evaluation == "local"

    def targeting_reason(self, context: dict[str, Any]) -> str | None:
        for key, allowed in self._lists:
            value = context.get(key)
            if value is None:
                return f"{key}_missing"
            if value not in allowed:
                return f"{key}_not_targeted"
        if self._min_txn:
            txn_count = context.get("txn_count")
            if txn_count is None:
                return "txn_count_missing"
            if txn_count < self._min_txn:
                return "below_min_txn"
        return None

    def in_coverage(self, molam_id: str) -> bool:
        threshold = self._coverage_threshold
        return threshold >= BUCKETS or coverage_bucket(self.id, molam_id) < threshold

    def variant_for_bucket(self, split: int) -> Variant:
        return self._active[bisect.bisect_right(self._bounds, split)]

    def in_server_range(self, split: int) -> bool:
        for low, high in self._server_ranges:
            if low <= split < high:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Decision:
    """What the server would answer a user with no stored assignment, and whether a
    stored assignment could make it answer otherwise (``server_required``)."""

    variant: Variant | None
    reason: str | None
    server_required: bool


def decide(experiment: Experiment, molam_id: str, context: dict[str, Any]) -> Decision:
    """Evaluate one user (a local-evaluation experiment; see ``Experiment.is_local``)."""
    reason = experiment.targeting_reason(context)
    if reason is not None:
        return Decision(None, reason, False)
    if not experiment.in_coverage(molam_id):
        return Decision(None, "outside_coverage", False)
    split = split_bucket(experiment.id, molam_id)
    return Decision(experiment.variant_for_bucket(split), None, experiment.in_server_range(split))


def compile_document(document: Any) -> dict[str, Experiment]:
    """Experiments by id from a definitions document; DefinitionError if unusable."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise DefinitionError(f"unsupported definitions format {document.get('format') if isinstance(document, dict) else None!r}")
    if document.get("buckets") != BUCKETS:
        raise DefinitionError(f"unsupported bucket count {document.get('buckets')!r}")
    experiments = document.get("experiments")
    if not isinstance(experiments, list):
        raise DefinitionError("experiments must be a list")
    compiled = {}
    for item in experiments:
        experiment = Experiment(item)
        compiled[experiment.id] = experiment
    return compiled

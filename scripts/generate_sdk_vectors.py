"""Generate the SDK's test vectors from the server's own assignment code.

    .venv/bin/python scripts/generate_sdk_vectors.py            # rewrite sdk/python/tests/vectors.json
    .venv/bin/python scripts/generate_sdk_vectors.py --check    # exit 1 if the file is out of date

Each case is (experiment shape × user × context) → what ``POST /assign`` answers a
user with no stored assignment, computed by ``services.experiments.assignment``
(targeting, coverage, hash, paused-arm renormalisation), plus whether the user's split
bucket lies in the experiment's ``server_buckets`` (computed by
``services.sdk.definitions``, as served to clients). Shapes are drawn from a seeded
generator: uneven and zero shares, 2-20 arms, coverage from 0.01 % to 100 %, every
targeting attribute, paused arms with pause histories, bandits.

The file is compact: experiments carry the definitions document exactly as served,
users and contexts are listed once, and each (experiment, context) row is one string
with a character per user:

* ``a``-``t``: variant index (in the experiment's ``variants`` list), evaluated locally;
* ``A``-``T``: that variant for a new user, but the bucket is in ``server_buckets``;
* a character of ``reason_codes``: not eligible, for that reason;
* ``?``: the experiment is evaluated by the server (bandit).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.enums import TARGETING_LIST_KEYS
from services.experiments import assignment
from services.experiments.buckets import split_bucket
from services.experiments.definitions import Definition, definition_from_document
from services.sdk.definitions import FORMAT, experiment_document

OUTPUT = ROOT / "sdk" / "python" / "tests" / "vectors.json"
SEED = 147
SHAPES = 140
USERS = 240
REASONS = (
    ["outside_coverage", "txn_count_missing", "below_min_txn"]
    + [f"{key}_missing" for key in TARGETING_LIST_KEYS]
    + [f"{key}_not_targeted" for key in TARGETING_LIST_KEYS]
)
REASON_CODES = "0123456789+-*"
VALUES = {
    "country": ["SN", "FR", "CI", "ML", "US"],
    "lang": ["fr", "en", "wo"],
    "currency": ["XOF", "EUR", "USD"],
    "region": ["dakar", "thies", "abidjan", "paris"],
    "device": ["android", "ios", "web"],
}
COVERAGES = [100, 100, 100, 50, 33.33, 12.5, 99.99, 0.01, 1, 75.25]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _shares(rng: random.Random, arms: int) -> list[float]:
    """Shares in hundredths summing to exactly 100 %, often uneven, sometimes with zeros."""
    style = rng.random()
    if style < 0.25:
        hundredths = [10_000 // arms] * arms
        hundredths[0] += 10_000 - sum(hundredths)
    else:
        cuts = sorted(rng.randrange(0, 10_001) for _ in range(arms - 1))
        hundredths = [b - a for a, b in zip([0] + cuts, cuts + [10_000])]
        if style > 0.9:
            hundredths[-1] += hundredths[0]
            hundredths[0] = 0
    return [h / 100 for h in hundredths]


def _targeting(rng: random.Random) -> dict[str, Any]:
    targeting: dict[str, Any] = {}
    for key in TARGETING_LIST_KEYS:
        if rng.random() < 0.3:
            targeting[key] = rng.sample(VALUES[key], rng.randint(1, 2))
    if rng.random() < 0.25:
        targeting["min_txn"] = rng.choice([1, 3, 10])
    return targeting


def _contexts(rng: random.Random, targeting: dict[str, Any]) -> list[dict[str, Any]]:
    matching = {key: (targeting[key][0] if key in targeting else rng.choice(VALUES[key])) for key in TARGETING_LIST_KEYS}
    matching["txn_count"] = targeting.get("min_txn", 0) + rng.randint(0, 5)
    contexts = [matching, {}]
    for key in targeting:
        missing = dict(matching)
        del missing[key if key != "min_txn" else "txn_count"]
        contexts.append(missing)
        wrong = dict(matching)
        if key == "min_txn":
            wrong["txn_count"] = targeting["min_txn"] - 1
        else:
            outside = [v for v in VALUES[key] if v not in targeting[key]]
            wrong[key] = outside[0] if outside else "zz"
        contexts.append(wrong)
    return contexts[:6]


def _shape(rng: random.Random, index: int) -> tuple[dict[str, Any], set[frozenset[str]]]:
    arms = 20 if index % 40 == 7 else rng.choice([2, 2, 2, 3, 3, 4, 5, 6])
    shares = _shares(rng, arms)
    variants = [
        {"id": _uuid(rng), "name": f"arm {i}", "config": {"arm": i, "copy": f"variant-{i}"}, "is_control": i == 0,
         "traffic_share": share, "paused": False}
        for i, share in enumerate(shares)
    ]
    # Pause history: the sets of paused arms the experiment has run under.
    configurations: set[frozenset[str]] = {frozenset()}
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 3)):
            paused = frozenset(v["id"] for v in rng.sample(variants, rng.randint(1, arms - 1)))
            configurations.add(paused)
        current = rng.choice(sorted(configurations, key=sorted))
        for variant in variants:
            variant["paused"] = variant["id"] in current
    document = {
        "id": _uuid(rng),
        "status": "running",
        "mode": "bandit" if index % 15 == 4 else "ab",
        "coverage": rng.choice(COVERAGES),
        "primary_metric": "conversion",
        "targeting": _targeting(rng) if rng.random() < 0.6 else {},
        "version": rng.randint(1, 9),
        "bandit": {"min_samples": 100, "floor": 0.01},
        "variants": variants,
    }
    return document, configurations


def _users(rng: random.Random) -> list[str]:
    special = ["a", "user:with:colons", "ñandú-✓", "用户-42", "🙂", "x" * 200, " leading space", "UPPER", "0"]
    return special + [f"user-{rng.getrandbits(40):010x}" for _ in range(USERS - len(special))]


def _code(definition: Definition, served: dict[str, Any], molam_id: str, context: dict[str, Any]) -> str:
    if served["evaluation"] != "local":
        return "?"
    user = assignment.UserContext(molam_id=molam_id, **context)
    reason = assignment.targeting_reason(definition, user)
    if reason is None and not assignment.in_coverage(definition, molam_id):
        reason = "outside_coverage"
    if reason is not None:
        return REASON_CODES[REASONS.index(reason)]
    split = split_bucket(definition.id, molam_id)
    variant = assignment.variant_for_bucket(definition, split)
    index = [v.id for v in definition.variants].index(variant.id)
    in_server_range = any(low <= split < high for low, high in served["server_buckets"])
    return chr((ord("A") if in_server_range else ord("a")) + index)


def generate() -> dict[str, Any]:
    rng = random.Random(SEED)
    users = _users(rng)
    experiments = []
    for index in range(SHAPES):
        cached, configurations = _shape(rng, index)
        served = experiment_document(cached, configurations, None)
        contexts = _contexts(rng, cached["targeting"])
        definition = definition_from_document(cached)
        expected = ["".join(_code(definition, served, user, context) for user in users) for context in contexts]
        experiments.append({"definition": served, "contexts": contexts, "expected": expected})
    cases = sum(len(e["contexts"]) for e in experiments) * len(users)
    return {
        "generator": "scripts/generate_sdk_vectors.py",
        "format": FORMAT,
        "seed": SEED,
        "cases": cases,
        "reasons": REASONS,
        "reason_codes": REASON_CODES,
        "users": users,
        "experiments": experiments,
    }


def encode(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, separators=(",", ":"), sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = parser.parse_args()
    text = encode(generate())
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run scripts/generate_sdk_vectors.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is current")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    vectors = json.loads(text)
    print(f"wrote {vectors['cases']:,} cases to {OUTPUT.relative_to(ROOT)} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

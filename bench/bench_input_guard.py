"""Micro timing of the request-body guard on the hot paths' bodies (no server, no database).

"before" is what the endpoints did without the guard: webargs' ``json.loads`` for assign,
``json.loads(parse_float=DecimalLiteral)`` for track and the event batch. "after" is
:func:`core.jsonsafe.loads`, which decodes once and walks the tree only when a cheap
scan says it might hold something to refuse. Also times, on their own, the tree walk
(which says where a problem is) and the byte scan for depth (bodies with more brackets
than the depth limit, such as a batch).

    .venv/bin/python bench/bench_input_guard.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import json
import sys
import timeit
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import jsonsafe
from core.money import DecimalLiteral


def bodies() -> dict[str, bytes]:
    experiment = str(uuid.uuid4())
    event = {"molam_id": "user_123", "event_type": "conversion", "value": 49.99, "currency": "EUR",
             "metadata": {"source": "web", "page": "checkout"}}
    return {
        "assign": json.dumps({"molam_id": "user_123", "country": "SN", "lang": "fr", "txn_count": 3}).encode(),
        "track": json.dumps(event).encode(),
        "track (emoji in metadata)": json.dumps({**event, "metadata": {"note": "\U0001f600"}}).encode(),
        "batch of 1,000": json.dumps({"events": [{**event, "experiment_id": experiment, "molam_id": f"u{i}"}
                                                 for i in range(1000)]}).encode(),
    }


def best_us(statement, number: int, repeat: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'body':<28}{'bytes':>9}{'before µs':>12}{'after µs':>11}{'overhead':>10}{'walk µs':>10}{'scan µs':>10}")
    for name, raw in bodies().items():
        exact = name != "assign"
        number = 20 if raw.startswith(b'{"events"') else 20_000
        if exact:
            before = best_us(lambda raw=raw: json.loads(raw, parse_float=DecimalLiteral), number, args.repeat)
        else:
            before = best_us(lambda raw=raw: json.loads(raw), number, args.repeat)
        after = best_us(lambda raw=raw, exact=exact: jsonsafe.loads(raw, exact_decimals=exact), number, args.repeat)
        decoded = json.loads(raw)
        walk = best_us(lambda decoded=decoded: jsonsafe.find_problems(decoded), number, args.repeat)
        depth = best_us(lambda raw=raw: jsonsafe._deeper_than(raw, jsonsafe.MAX_DEPTH), number, args.repeat)
        print(f"{name:<28}{len(raw):>9}{before:>12.2f}{after:>11.2f}{after / before - 1:>+10.0%}{walk:>10.2f}{depth:>10.2f}")
    print(f"(best of {args.repeat}; the full walk runs only for bodies with \\u0000 or \\uD8xx-\\uDFxx escapes, "
          f"the depth check only for bodies with more than {jsonsafe.MAX_DEPTH} brackets)")


if __name__ == "__main__":
    main()

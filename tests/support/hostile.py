"""Hostile JSON, shared by the in-suite matrix (tests/api/test_fuzz_hostile.py) and ``make fuzz``'s hooks.

Each value is raw JSON text, because most of them cannot be produced by ``json.dumps``
from Python objects a test would hold (NaN is not JSON; a lone surrogate is sent as
its escape). :func:`body_with` places one inside an otherwise ordinary body.
"""
from __future__ import annotations

import json
from typing import Any

DEEP = 1000

#: name -> raw JSON text of a value the API must refuse wherever it appears.
HOSTILE_VALUES: dict[str, str] = {
    "nul": '"a\\u0000b"',
    "surrogate": '"a\\ud800b"',
    "low_surrogate": '"\\udfff"',
    "nan": "NaN",
    "infinity": "Infinity",
    "negative_infinity": "-Infinity",
    "overflow": "1e400",
    "nul_key": '{"k\\u0000": 1}',
    "surrogate_key": '{"\\udc00": 1}',
    "nested_nul": '[{"a": ["\\u0000"]}]',
    "deep_list": "[" * DEEP + "]" * DEEP,
    "deep_object": '{"a":' * DEEP + "1" + "}" * DEEP,
}

#: Whole bodies that are not JSON at all (400) or refused as a whole (422).
HOSTILE_BODIES: dict[str, tuple[bytes, int]] = {
    "truncated": (b'{"name": ', 400),
    "not_utf8": (b'{"name": "\xff\xfe"}', 400),
    "bare_nan": (b"NaN", 422),
    "deep_body": (b"[" * DEEP + b"]" * DEEP, 422),
    "nul_top_key": (b'{"\\u0000": 1}', 422),
}

_MARK = "\x01hostile\x01"


def body_with(body: Any, path: tuple[str | int, ...], name: str) -> bytes:
    """``body`` serialised with the value at ``path`` replaced by ``HOSTILE_VALUES[name]``.

    Missing steps on the way are added (a list for an integer step, else an object);
    ``()`` replaces the whole body.
    """
    if not path:
        return HOSTILE_VALUES[name].encode()
    copy = json.loads(json.dumps(body))
    node = copy
    for step, following in zip(path[:-1], path[1:]):
        empty: Any = [{}] * (following + 1) if isinstance(following, int) else {}
        if isinstance(node, dict):
            node = node.setdefault(step, empty)
        else:
            node[step] = node[step] if node[step] is not None else empty
            node = node[step]
    node[path[-1]] = _MARK
    return json.dumps(copy).replace(json.dumps(_MARK), HOSTILE_VALUES[name]).encode()


def leaf_paths(body: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path to a value in ``body`` (containers included), shallowest first."""
    paths: list[tuple[str | int, ...]] = []
    if isinstance(body, dict):
        for key, value in body.items():
            paths.append((*prefix, key))
            paths.extend(leaf_paths(value, (*prefix, key)))
    elif isinstance(body, list):
        for index, value in enumerate(body):
            paths.append((*prefix, index))
            paths.extend(leaf_paths(value, (*prefix, index)))
    return paths


def error_paths(errors: Any, prefix: str = "") -> list[str]:
    """Dotted paths of a marshmallow-shaped errors object, as the dashboard shows them."""
    if isinstance(errors, dict):
        out: list[str] = []
        for key, value in errors.items():
            path = prefix if key == "_schema" else f"{prefix}.{key}" if prefix else str(key)
            out.extend(error_paths(value, path))
        return out
    return [prefix]

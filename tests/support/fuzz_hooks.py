"""schemathesis hooks for ``make fuzz`` (loaded through ``SCHEMATHESIS_HOOKS``).

Every other generated case with a JSON body is sent with one hostile value of
:mod:`tests.support.hostile` in place of one of its values (cycling deterministically
through the values and the body's paths), or, every tenth time, with a hostile body
of its own. schemathesis serialises bodies with ``allow_nan=False`` and never nests
1,000 levels deep, so these reach the API only this way; its own generation adds NUL
bytes (``--generation-allow-x00``) everywhere else, query strings and paths included.
"""
from __future__ import annotations

import itertools
from typing import Any

import schemathesis

from tests.support.hostile import HOSTILE_BODIES, HOSTILE_VALUES, body_with, leaf_paths

_calls = itertools.count()
_VALUE_NAMES = list(HOSTILE_VALUES)
_BODIES = [raw for raw, _ in HOSTILE_BODIES.values()]


def hostile_payload(body: Any, n: int) -> bytes | None:
    """The ``n``-th hostile twist of ``body``, or ``None`` when this call sends the case unchanged."""
    if n % 2:
        return None
    turn = n // 2
    if turn % 10 == 9:
        return _BODIES[(turn // 10) % len(_BODIES)]
    paths = leaf_paths(body) or [()]
    return body_with(body, paths[turn % len(paths)], _VALUE_NAMES[turn % len(_VALUE_NAMES)])


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    media_type = getattr(case, "media_type", None) or ""
    body = getattr(case, "body", None)
    if "json" not in media_type or not isinstance(body, (dict, list)):
        return
    payload = hostile_payload(body, next(_calls))
    if payload is not None:
        kwargs["data"] = payload

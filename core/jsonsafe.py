"""JSON that PostgreSQL can store: bounded depth, finite numbers, no NUL, no unpaired surrogates.

PostgreSQL refuses U+0000 in ``text`` and ``jsonb``, any string that is not valid
UTF-8 (the JSON escape ``"\\ud800"`` decodes to an unpaired surrogate, which has no
UTF-8 form), and NaN or Infinity in ``jsonb``. Python's ``json`` accepts all of them,
and recurses once per nesting level until ``RecursionError``. :func:`loads` is the one
parser for client bodies: it refuses all of this and says *where*, as a path of keys
and list indexes, so the API can name the field.

The happy path is a single ``json`` decode plus a substring search and two byte
counts over the raw body. Only a body with a ``\\u0000`` or surrogate escape, or with
more brackets than the depth limit, gets a closer look at its bytes (still C-speed
scans); the tree is walked only when that look finds something, to say where.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from core.money import DecimalLiteral

#: Deepest nesting of objects and arrays accepted in a body (the body itself is level 1).
MAX_DEPTH = 64
#: At most this many problems are reported for one body.
MAX_PROBLEMS = 20
#: A too-deep container is reported by the first steps of its path (enough to name the field).
DEPTH_PATH_STEPS = 8

Path = tuple[str | int, ...]

NUL_MESSAGE = "must not contain NUL (U+0000)"
SURROGATE_MESSAGE = "must not contain unpaired surrogates (U+D800 to U+DFFF)"
NON_FINITE_MESSAGE = "must be a finite number (NaN and Infinity are not JSON)"
DEPTH_MESSAGE = f"is nested deeper than {MAX_DEPTH} levels"


class NotJSON(ValueError):
    """The bytes are not a JSON document (syntax, encoding)."""


class Rejected(ValueError):
    """A JSON document holding what cannot be stored; ``problems`` are ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[Path, str]]):
        super().__init__("; ".join(f"{dotted(path) or 'body'}: {message}" for path, message in problems))
        self.problems = problems


def text_problem(value: str) -> str | None:
    """Why PostgreSQL would refuse this string, or ``None``."""
    if "\x00" in value:
        return NUL_MESSAGE
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE_MESSAGE
    return None


def printable_key(key: str) -> str:
    """A key as it can be shown in an error: NUL and unpaired surrogates as their escapes."""
    return key.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def dotted(path: Path) -> str:
    """``("variants", 0, "config")`` → ``"variants.0.config"``."""
    return ".".join(printable_key(part) if isinstance(part, str) else str(part) for part in path)


def find_problems(value: Any, *, strings: bool = True, max_depth: int = MAX_DEPTH) -> list[tuple[Path, str]]:
    """Everything in a decoded document that :func:`loads` refuses, up to :data:`MAX_PROBLEMS`.

    ``strings=False`` skips the string checks (when the raw text holds no escape that
    could produce NUL or a surrogate). Floats are always checked; the walk never goes
    deeper than ``max_depth`` + 1, so it cannot recurse without bound.
    """
    problems: list[tuple[Path, str]] = []
    path: list[str | int] = []

    def leaf(node: Any) -> None:
        if isinstance(node, str):
            if strings:
                problem = text_problem(node)
                if problem:
                    problems.append((tuple(path), problem))
        elif isinstance(node, float) and not math.isfinite(node):
            problems.append((tuple(path), NON_FINITE_MESSAGE))

    def walk(node: dict | list, depth: int) -> None:
        if depth > max_depth:
            problems.append((tuple(path[:DEPTH_PATH_STEPS]), DEPTH_MESSAGE))
            return
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if len(problems) >= MAX_PROBLEMS:
                return
            path.append(key)
            if strings and isinstance(key, str) and text_problem(key):
                problems.append((tuple(path), f"has a key that {text_problem(key)}"))
            elif isinstance(child, (dict, list)):
                walk(child, depth + 1)
            else:
                leaf(child)
            path.pop()

    if isinstance(value, (dict, list)):
        walk(value, 1)
    else:
        leaf(value)
    return problems


# Prefilters on the raw bytes, so that a body holding nothing to refuse is never walked.
# Escaped backslashes go first: "\\\\u0000" is the six characters \u0000, not NUL.
_LONE_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_TO_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}'))


def _may_hold_bad_text(raw: bytes) -> bool:
    """Whether the JSON text has a ``\\u0000`` escape or an unpaired surrogate escape (exact but for false positives)."""
    if b"\\u" not in raw:
        return False
    if b"\\\\" in raw:  # replaced, not removed: removing could join two escapes into a pair
        raw = raw.replace(b"\\\\", b"__")
    if b"\\u0000" in raw:
        return True
    return (b"\\ud" in raw or b"\\uD" in raw) and _LONE_SURROGATE_ESCAPE.search(raw) is not None


def _deeper_than(raw: bytes, max_depth: int) -> bool:
    """Whether valid JSON text nests deeper than ``max_depth``, from its brackets outside strings.

    Escapes are dropped so every remaining quote delimits a string; string contents are
    dropped; then each pass deletes the innermost ``[]`` pairs (objects mapped to arrays),
    one level per pass. All at C speed: no tree walk for a large flat batch.
    """
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(raw.translate(_TO_BRACKETS, _NOT_STRUCTURE).split(b'"')[::2])
    for _ in range(max_depth):
        if not structure:
            return False
        structure = structure.replace(b"[]", b"")
    return bool(structure)


class _NonFinite(Exception):
    """Raised from inside the strict decoder; the document is then decoded again to find where."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _strict_float(make: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        number = make(text)
        if math.isinf(number):  # a literal too large for a double, e.g. 1e400
            raise _NonFinite(text)
        return number

    return parse


_STRICT = {
    float: json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_strict_float(float)),
    DecimalLiteral: json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_strict_float(DecimalLiteral)),
}
# Only to locate what the strict decoder refused: "NaN", "Infinity" and "-Infinity" become floats.
_LENIENT = {kind: json.JSONDecoder(parse_constant=float, parse_float=kind) for kind in (float, DecimalLiteral)}


def loads(data: bytes | str, *, exact_decimals: bool = False) -> Any:
    """Decode a client's JSON body, refusing what PostgreSQL cannot store.

    ``exact_decimals``: numbers with a fraction or exponent are :class:`DecimalLiteral`
    (floats that keep their decimal text, for exact money). Raises :class:`NotJSON`
    for bytes that are not JSON and :class:`Rejected`, with the paths, for a document
    nested deeper than :data:`MAX_DEPTH`, holding NaN, Infinity or a number too large
    for a double, or a string or key with NUL or an unpaired surrogate.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJSON(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    kind = DecimalLiteral if exact_decimals else float
    try:
        try:
            value = _STRICT[kind].decode(text)
        except _NonFinite:
            value = _LENIENT[kind].decode(text)
            raise Rejected(find_problems(value) or [((), NON_FINITE_MESSAGE)]) from None
    except Rejected:
        raise
    except RecursionError:
        raise Rejected([(path_beyond_depth(text), DEPTH_MESSAGE)]) from None
    except ValueError as exc:  # JSONDecodeError, or an integer with more digits than Python converts
        raise NotJSON(str(exc)) from None
    if _may_hold_bad_text(raw):
        problems = find_problems(value)
    elif raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(raw, MAX_DEPTH):
        problems = find_problems(value, strings=False)
    else:
        return value
    if problems:
        raise Rejected(problems)
    return value


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def path_beyond_depth(text: str, max_depth: int = MAX_DEPTH) -> Path:
    """The path of the first container nested deeper than ``max_depth``, from the raw text.

    For documents too deep for the decoder itself (it raises ``RecursionError``):
    a flat scan over string tokens and brackets, stopping at the offending bracket.
    """
    stack: list[list[Any]] = []  # [bracket, current key or index]
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            if len(stack) >= max_depth:
                return tuple(entry[1] for entry in stack if entry[1] is not None)[:DEPTH_PATH_STEPS]
            stack.append([token, 0 if token == "[" else None])
        elif token in ("]", "}"):
            if stack:
                stack.pop()
        elif token == ",":
            if stack:
                stack[-1][1] = stack[-1][1] + 1 if stack[-1][0] == "[" else None
        elif stack and stack[-1][0] == "{" and stack[-1][1] is None:
            try:
                stack[-1][1] = json.loads(token)
            except ValueError:
                stack[-1][1] = token[1:-1]
    return ()

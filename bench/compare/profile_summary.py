"""Where a worker's time goes: shares of py-spy samples (``--format raw``, collapsed stacks) by component.

``side_by_side.py --profile DIR`` records one gunicorn worker per case in the last round;
this reads those files and prints, per component, the share of samples whose stack passes
through it. A sample is counted once, under the component of the innermost frame that belongs
to one (decorators such as authentication, validation or Flask-Limiter's wrap the whole view,
so an outer frame says little), except that Redis calls made by Flask-Limiter rather than by
the service count as Flask-Limiter's. The harness records with ``--gil``: samples are of the thread holding the GIL, i.e.
where the worker's Python CPU goes; waiting for Redis or PostgreSQL without the GIL is not in it.

    .venv/bin/python bench/compare/profile_summary.py DIR/project-returning.txt [...]
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

LIMITER = ("Flask-Limiter (limits, its Redis storage)", ("flask_limiter/", "limits/"))
# (component, substrings of a frame "function (file:line)").
COMPONENTS = (
    ("Redis round trip (redis-py + hiredis, incl. waiting for the reply)", ("redis/", "hiredis")),
    ("PostgreSQL round trip (psycopg, SQLAlchemy pool)", ("psycopg/", "sqlalchemy/")),
    ("JSON encode/decode", ("orjson", "json/encoder", "json/decoder", "json/__init__")),
    ("request validation (marshmallow, webargs)", ("marshmallow/", "webargs/")),
    ("authentication (bearer token, cached verification)", ("api/auth.py",)),
    ("Prometheus request metrics", ("prometheus_flask_exporter", "prometheus_client")),
    ("CORS", ("flask_cors",)),
    ("the assignment / ingestion service code", ("services/",)),
    ("flask-smorest", ("flask_smorest/",)),
    ("Flask + Werkzeug request/response machinery", ("flask/", "werkzeug/")),
    ("gunicorn: HTTP parsing, socket I/O, thread pool", ("gunicorn/",)),
)
IDLE = ("select (selectors.py", "wait (threading.py", "_worker (concurrent/futures", "poll (selectors.py")


def summarise(path: Path) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples = int(n)
        total += samples
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in IDLE):
            counts["idle (waiting for work or a lock)"] += samples
            continue
        label = "other"
        for frame in reversed(frames):
            found = next((name for name, needles in (LIMITER, *COMPONENTS) if any(n_ in frame for n_ in needles)), None)
            if found:
                label = found
                break
        if label == COMPONENTS[0][0] and not any("services/" in f for f in frames) and any(
            needle in f for f in frames for needle in LIMITER[1]
        ):
            label = LIMITER[0]
        counts[label] += samples
    return [(label, n / total) for label, n in counts.most_common()] + [("samples", total)] if total else []


def main(paths: list[str]) -> int:
    for name in paths:
        print(f"\n{name}")
        for label, share in summarise(Path(name)):
            print(f"  {share:>6d}  samples" if label == "samples" else f"  {share:6.1%}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

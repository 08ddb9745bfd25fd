"""In-process cost of one request on the hot paths, shipped defaults on (no HTTP server, no network load).

Each case calls the production-mode Flask app (``APP_ENV=production``, rate limiting,
access log, Prometheus in multi-process mode as under gunicorn) directly as a WSGI
callable with a prebuilt environ, so the figure is the app's own CPU plus its Redis and
PostgreSQL round trips, free of wrk and gunicorn; it moves with code changes, not with the
machine's load, far more than a wrk run on a shared machine does. Cases:

* ``returning``: ``POST /assign`` for a user assigned beforehand (one Redis round trip);
* ``first_time``: ``POST /assign`` for a new user each call (plus the PostgreSQL INSERT);
* ``track``: ``POST /track`` of a new event for an assigned user (one Redis round trip).

It creates its own database (default ``molam_bench_test_micro``, dropped and recreated)
and flushes the Redis database it is given (its broker URL points at database 12 of the same server).

    .venv/bin/python bench/micro_hot_paths.py --redis-url redis://127.0.0.1:6379/13 [--calls 3000] [--repeat 5]
    .venv/bin/python bench/micro_hot_paths.py ... --profile returning     # cProfile of one case, top functions
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["MOLAM_ENV_FILE"] = ""
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="molam-micro-prom-"))


from bench.bench_assign import BENCH_IDENTITY, ephemeral_signer
from core.config import PROJECT_ROOT, Settings, normalise_database_url, redis_url_with_db


def _migrate(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from tests.support.database import create_database

    create_database(database_url)
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = database_url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def _environ(method: str, path: str, body: bytes, token: str) -> dict:
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "bench:8000",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_CONNECTION": "keep-alive",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


class Caller:
    """Calls the WSGI app the way gunicorn does (start_response, iterate, close)."""

    def __init__(self, app):
        self.app = app
        self.status = ""

    def _start(self, status: str, headers: list, exc_info=None) -> None:
        self.status = status

    def __call__(self, environ: dict) -> tuple[str, bytes]:
        result = self.app(environ, self._start)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return self.status, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/molam_bench_test_micro")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", default="returning,first_time,track")
    parser.add_argument("--profile", help="a case to run under cProfile instead of timing")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a boolean Settings field (e.g. access_log=0) to measure what it costs")
    args = parser.parse_args()

    database_url = normalise_database_url(args.database_url)
    _migrate(database_url)
    public_pem, mint = ephemeral_signer()
    settings = Settings(
        app_env="production",
        database_url=database_url,
        redis_url=args.redis_url,
        celery_broker_url=redis_url_with_db(args.redis_url, 12),
        molam_id_public_key=public_pem,
        molam_id_issuer=BENCH_IDENTITY["MOLAM_ID_ISSUER"],
        molam_id_audience=BENCH_IDENTITY["MOLAM_ID_AUDIENCE"],
        audit_hmac_key=BENCH_IDENTITY["AUDIT_HMAC_KEY"],
        # The budget stays on (its counter is spent on every call) but out of the measurement's way.
        assign_rate_limit="100000000/minute",
        track_rate_limit="100000000/minute",
        **{name: value not in ("0", "false") for name, _, value in (item.partition("=") for item in args.set)},
    )
    import logging

    from api import create_app
    from core.logs import configure_logging
    from core.redis import get_redis

    configure_logging(settings.log_format, settings.log_level, process="api")
    # The access log line is formatted and written on every request, as in production; to /dev/null.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))
    get_redis(args.redis_url).flushdb()
    app = create_app(settings)
    call = Caller(app)
    admin, service = mint("ops_admin", "bench-ops_admin"), mint("checkout_module", "bench-checkout_module")

    def api(method: str, path: str, payload: object | None, token: str) -> tuple[str, object]:
        body = json.dumps(payload).encode() if payload is not None else b""
        status, raw = call(_environ(method, path, body, token))
        return status, json.loads(raw) if raw else None

    status, experiment = api("POST", "/api/experiments", {
        "name": "micro", "targeting": {"country": ["SN", "FR"]},
        "variants": [
            {"name": "control", "config": {"button_color": "blue"}, "traffic_share": 50, "is_control": True},
            {"name": "green", "config": {"button_color": "green"}, "traffic_share": 50},
        ],
    }, admin)
    assert status.startswith("201"), (status, experiment)
    experiment_id = experiment["id"]  # type: ignore[index]
    status, _ = api("POST", f"/api/experiments/{experiment_id}/start", None, admin)
    assert status.startswith("200"), status
    assign_path = f"/api/experiments/{experiment_id}/assign"
    track_path = f"/api/experiments/{experiment_id}/track"
    returning_body = json.dumps({"molam_id": "returning-user", "country": "SN", "lang": "fr"}).encode()
    status, answer = call(_environ("POST", assign_path, returning_body, service))
    assert status.startswith("200"), (status, answer)

    counter = iter(range(10**9))

    def returning() -> dict:
        return _environ("POST", assign_path, returning_body, service)

    def first_time() -> dict:
        body = b'{"molam_id":"new-%d-%s","country":"SN","lang":"fr"}' % (next(counter), uuid.uuid4().hex[:8].encode())
        return _environ("POST", assign_path, body, service)

    def track() -> dict:
        body = b'{"molam_id":"returning-user","event_type":"conversion","value":12.5,"event_id":"e-%d-%s"}' % (
            next(counter), uuid.uuid4().hex[:8].encode())
        return _environ("POST", track_path, body, service)

    cases = {"returning": (returning, "200"), "first_time": (first_time, "200"), "track": (track, "202")}
    for name, (make, expected) in cases.items():  # warm up every path once, and check it answers
        status, raw = call(make())
        assert status.startswith(expected), (name, status, raw)

    if args.profile:
        import cProfile
        import pstats

        make, _ = cases[args.profile]
        environs = [make() for _ in range(args.calls)]
        profiler = cProfile.Profile()
        profiler.enable()
        for environ in environs:
            call(environ)
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats(os.environ.get("MICRO_SORT", "tottime")).print_stats(int(os.environ.get("MICRO_TOP", "45")))
        if os.environ.get("MICRO_CALLEES"):  # e.g. MICRO_CALLEES=request_json: what that function spends its time in
            stats.print_callees(os.environ["MICRO_CALLEES"])
        return

    figures: dict[str, dict[str, float]] = {}
    for name in args.cases.split(","):
        make, expected = cases[name]
        runs = []
        for _ in range(args.repeat):
            environs = [make() for _ in range(args.calls)]
            wall, cpu = time.perf_counter(), time.process_time()
            for environ in environs:
                call(environ)
            runs.append(((time.perf_counter() - wall) / args.calls * 1e6, (time.process_time() - cpu) / args.calls * 1e6))
        status, raw = call(make())
        assert status.startswith(expected), (name, status, raw)
        wall_us = sorted(r[0] for r in runs)
        cpu_us = sorted(r[1] for r in runs)
        figures[name] = {"wall_us_min": wall_us[0], "wall_us_median": wall_us[len(wall_us) // 2],
                         "cpu_us_min": cpu_us[0], "cpu_us_median": cpu_us[len(cpu_us) // 2]}
        print(f"{name:11s} wall {wall_us[0]:7.0f} µs min, {wall_us[len(wall_us) // 2]:7.0f} median;"
              f"  process CPU {cpu_us[0]:7.0f} µs min, {cpu_us[len(cpu_us) // 2]:7.0f} median  ({args.repeat} × {args.calls})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark of the Python SDK's local assign against the server's assign, in one run.

Starts the platform the production way (``APP_ENV=production``, gunicorn with
``gunicorn.conf.py``, Celery worker and beat, rate limiting on with a budget high
enough for one load generator) on a database and Redis database of its own, then:

1. **server**: ``wrk`` on ``POST /assign`` for returning users (the server's fastest
   path: one Redis round trip), reporting requests/s, latency percentiles and the
   gunicorn workers' CPU seconds, so the rate *per core* is requests / CPU seconds;
2. **local**: ``Client.assign`` in this process for users of the same experiment (a
   fixed split with targeting), one call at a time, timed individually
   (``perf_counter_ns``); the rate per core is calls / CPU seconds of the calling
   thread. Exposures are queued and uploaded by the client's thread during the run,
   as in production;
3. **definitions**: 1,000 running experiments (5 arms each), then
   ``GET /api/sdk/definitions`` timed end to end over HTTP: right after a change
   (snapshot rebuilt from PostgreSQL), from the cached snapshot, and 304 with
   ``If-None-Match``; plus the client's full download and compile.

Usage: ``.venv/bin/python bench/bench_sdk.py [--duration 10] [--calls 200000]``
(needs ``wrk``). Writes ``bench/results/sdk.json``; figures in bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sdk" / "python"))

import redis

from bench.bench_assign import (
    BENCH_IDENTITY,
    LUA_RETURNING,
    Server,
    ephemeral_signer,
    free_port,
    lua,
    post_json,
    recreate_database,
    require_wrk,
    run_wrk,
    wait_http,
)
from molam_experiments import Client

BIN = Path(sys.executable).parent
TARGETING = {"country": ["SN", "FR"], "lang": ["fr"], "min_txn": 1}
CONTEXT = {"country": "SN", "lang": "fr", "txn_count": 7}


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values))) - 1))
    return sorted_values[index]


def timed_get(url: str, token: str, headers: dict[str, str] | None = None) -> tuple[float, int, int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", **(headers or {})})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            status, etag = response.status, response.headers.get("ETag", "")
    except urllib.error.HTTPError as exc:
        body, status, etag = exc.read(), exc.code, exc.headers.get("ETag", "")
    return (time.perf_counter() - started) * 1000, status, len(body), etag


def start(name: str, command: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    log = (logs / f"{name}.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def create_running(api_url: str, token: str, index: int, arms: int = 5) -> dict:
    shares = [round(100 / arms, 2)] * arms
    shares[0] = round(100 - sum(shares[1:]), 2)
    experiment = post_json(
        f"{api_url}/api/experiments",
        {
            "name": f"sdk bench {index}",
            "targeting": TARGETING,
            "variants": [
                {"name": f"arm {i}", "config": {"arm": i, "button_color": f"#{i:06x}"}, "traffic_share": share,
                 "is_control": i == 0}
                for i, share in enumerate(shares)
            ],
        },
        token,
    )
    post_json(f"{api_url}/api/experiments/{experiment['id']}/start", {}, token)
    return experiment


def insert_running(database_url: str, count: int, arms: int = 5) -> None:
    import uuid

    import psycopg
    from psycopg.types.json import Jsonb

    experiments, variants = [], []
    for index in range(count):
        experiment_id = uuid.uuid4()
        experiments.append((experiment_id, f"sdk bench bulk {index}", Jsonb(TARGETING)))
        for arm in range(arms):
            variants.append((uuid.uuid4(), experiment_id, f"arm {arm}", Jsonb({"arm": arm, "button_color": f"#{arm:06x}"}),
                             20, arm == 0, arm))
    with psycopg.connect(database_url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO experiments (id, name, created_by, status, targeting, started_at) "
                "VALUES (%s, %s, 'bench', 'running', %s, now())", experiments)
            cur.executemany(
                "INSERT INTO experiment_variants (id, experiment_id, name, config, traffic_share, is_control, position) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)", variants)


def bench_local(client: Client, experiment_id: str, calls: int, users: int) -> dict:
    durations = []
    ns = time.perf_counter_ns
    ids = [f"local-{n}" for n in range(users)]
    for warm in range(2000):
        client.assign(experiment_id, ids[warm % users], **CONTEXT)
    cpu_started = time.thread_time()
    wall_started = time.perf_counter()
    for n in range(calls):
        molam_id = ids[n % users]
        started = ns()
        client.assign(experiment_id, molam_id, **CONTEXT)
        durations.append(ns() - started)
    cpu = time.thread_time() - cpu_started
    wall = time.perf_counter() - wall_started
    durations.sort()
    answer = client.assign(experiment_id, ids[0], **CONTEXT)
    return {
        "calls": calls,
        "distinct_users": users,
        "source": answer.source,
        "p50_us": percentile(durations, 50) / 1000,
        "p99_us": percentile(durations, 99) / 1000,
        "p999_us": percentile(durations, 99.9) / 1000,
        "max_us": durations[-1] / 1000,
        "mean_us": statistics.fmean(durations) / 1000,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "per_core_per_s": calls / cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of the wrk run on the server's assign")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--calls", type=int, default=200_000, help="local assign calls timed")
    parser.add_argument("--users", type=int, default=50_000, help="distinct users the local calls cycle over")
    parser.add_argument("--server-users", type=int, default=2_000, help="returning users for the server's assign")
    parser.add_argument("--experiments", type=int, default=1_000, help="running experiments for the definitions download")
    parser.add_argument("--downloads", type=int, default=15, help="timed downloads per kind")
    parser.add_argument("--admin-database-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--database", default="molam_experiments_bench_sdk")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/10"))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "sdk.json")
    args = parser.parse_args()
    if not require_wrk():
        return 2

    database_url = recreate_database(args.admin_database_url, args.database)
    store = redis.Redis.from_url(args.redis_url)
    store.flushdb()
    redis.Redis.from_url(args.broker_url).flushdb()
    public_pem, mint = ephemeral_signer()
    admin_token, service_token = mint("ops_admin", "bench-admin"), mint("pay_module", "bench-pay")
    var_dir = Path(tempfile.mkdtemp(prefix="bench-sdk-"))
    env = {
        **os.environ,
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "CELERY_BROKER_URL": args.broker_url,
        "MOLAM_ID_PUBLIC_KEY": public_pem,
        "MOLAM_VAR_DIR": str(var_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(var_dir / "prometheus"),
        "RATE_LIMIT_ENABLED": "1",
        "ASSIGN_RATE_LIMIT": "100000000/minute",
        "ASSIGNMENTS_BATCH_RATE_LIMIT": "100000000/minute",
        "TRACK_RATE_LIMIT": "100000000/minute",
        "PYTHONPATH": str(ROOT),
    }
    env.update(BENCH_IDENTITY)
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
    server_args = Namespace(workers=int(os.environ.get("WEB_CONCURRENCY", "4")), worker_class="gthread",
                            threads=int(os.environ.get("GUNICORN_THREADS", "2")))
    api = Server("api.wsgi:app", free_port(), env, server_args, var_dir / "api.log")
    worker = start("worker", [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "--loglevel=WARNING", "--concurrency=1"], env, var_dir)
    beat = start("beat", [str(BIN / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel=WARNING",
                          "-s", str(var_dir / "celerybeat-schedule")], env, var_dir)
    results: dict = {
        "configuration": {
            "app_env": "production", "rate_limiting": "on (budget raised to 100000000/minute for one load generator)",
            "gunicorn": vars(server_args), "worker_and_beat": True, "cpus": os.cpu_count(),
        },
        "load_before": os.getloadavg(),
    }
    client = None
    try:
        wait_http(f"{api.url}/healthz", timeout_s=180)
        experiment = create_running(api.url, admin_token, 0, arms=2)
        assign_url = f"{api.url}/api/experiments/{experiment['id']}/assign"
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: post_json(assign_url, {"molam_id": f"returning-{n}", **CONTEXT}, service_token),
                          range(args.server_users)))

        # 1. the server's assign (returning users, cached), rate per core of the API workers
        run_wrk(assign_url, lua(LUA_RETURNING, token=service_token, users=args.server_users), args.connections, 3, 2)
        cpu_before = api.cpu_seconds()
        server = run_wrk(assign_url, lua(LUA_RETURNING, token=service_token, users=args.server_users),
                         args.connections, args.duration, 2)
        server_cpu = api.cpu_seconds() - cpu_before
        server["api_cpu_seconds"] = server_cpu
        server["per_core_per_s"] = server["requests"] / server_cpu if server_cpu else None
        results["server_assign"] = server

        # 2. local assign in this process
        client = Client(api.url, service_token, refresh="stream")
        uploads_started = time.perf_counter()
        local = bench_local(client, experiment["id"], args.calls, args.users)
        drained = client.flush(timeout_s=600)
        upload_seconds = time.perf_counter() - uploads_started
        local["exposures"] = client.status()["exposures"]
        # Every distinct user's exposure, recomputed and stored by POST /api/assignments/batch.
        local["exposure_upload"] = {
            "drained": drained, "seconds": upload_seconds,
            "stored_per_s": local["exposures"]["sent"] / upload_seconds,
        }
        results["local_assign"] = local
        results["ratio_local_to_server_per_core"] = local["per_core_per_s"] / server["per_core_per_s"]
        client.close(timeout_s=30)
        client = None

        # 3. definitions for N running experiments (written straight to PostgreSQL: setting
        # up a thousand experiments through the API is not what is measured here)
        insert_running(database_url, args.experiments - 1)
        definitions_url = f"{api.url}/api/sdk/definitions"
        from services import cache

        rebuilt, cached, not_modified = [], [], []
        size, etag = 0, ""
        for _ in range(args.downloads):
            store.set(cache.SDK_DEFINITIONS_VERSION_KEY, cache.new_definitions_version())
            elapsed, status, size, etag = timed_get(definitions_url, service_token)
            assert status == 200, status
            rebuilt.append(elapsed)
            for _ in range(4):  # one per API worker process, so each holds the snapshot
                timed_get(definitions_url, service_token)
            elapsed, status, size, etag = timed_get(definitions_url, service_token)
            cached.append(elapsed)
            elapsed, status, _, _ = timed_get(definitions_url, service_token, {"If-None-Match": etag})
            assert status == 304, status
            not_modified.append(elapsed)
        started = time.perf_counter()
        downloaded = Client(api.url, service_token, refresh=3600)
        client_load_ms = (time.perf_counter() - started) * 1000
        loaded = downloaded.status()["definitions"]["experiments"]
        downloaded.close(timeout_s=5)

        def summary(values: list[float]) -> dict:
            values = sorted(values)
            return {"median_ms": statistics.median(values), "p90_ms": percentile(values, 90), "max_ms": values[-1],
                    "n": len(values)}

        results["definitions"] = {
            "running_experiments": args.experiments,
            "arms_each": 5,
            "bytes": size,
            "after_a_change": summary(rebuilt),
            "cached_snapshot": summary(cached),
            "not_modified_304": summary(not_modified),
            "client_start_ms": client_load_ms,
            "client_experiments_loaded": loaded,
        }
    finally:
        if client is not None:
            client.close(timeout_s=5)
        stop(beat)
        stop(worker)
        api.stop()
    results["load_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    server, local, definitions = results["server_assign"], results["local_assign"], results["definitions"]
    print("| measurement | figure |")
    print("|---|---|")
    print(f"| server POST /assign (returning users, wrk -c {args.connections}) | {server['rps']:,.0f} req/s, "
          f"p99 {server['p99_us'] / 1000:.1f} ms, {server['per_core_per_s']:,.0f} per API CPU-second |")
    print(f"| local Client.assign ({local['calls']:,} calls, {local['distinct_users']:,} users) | p50 {local['p50_us']:.1f} µs, "
          f"p99 {local['p99_us']:.1f} µs, p99.9 {local['p999_us']:.1f} µs, {local['per_core_per_s']:,.0f} per CPU-second |")
    upload = local["exposure_upload"]
    print(f"| exposure upload (POST /api/assignments/batch, 1,000 per batch) | {local['exposures']['sent']:,} stored in "
          f"{upload['seconds']:.1f} s ({upload['stored_per_s']:,.0f}/s), dropped {local['exposures']['dropped']:,} |")
    print(f"| ratio local / server per core | {results['ratio_local_to_server_per_core']:,.0f}× |")
    print(f"| definitions, {definitions['running_experiments']:,} experiments ({definitions['bytes']:,} bytes) | "
          f"after a change {definitions['after_a_change']['median_ms']:.0f} ms (p90 {definitions['after_a_change']['p90_ms']:.0f}), "
          f"cached {definitions['cached_snapshot']['median_ms']:.0f} ms (p90 {definitions['cached_snapshot']['p90_ms']:.0f}), "
          f"304 {definitions['not_modified_304']['median_ms']:.1f} ms; client start {definitions['client_start_ms']:.0f} ms |")
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

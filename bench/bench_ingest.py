"""Benchmark of metric ingestion, in one run:

(a) single-event ``POST /api/experiments/{id}/track`` accepted requests/s and latency at
    concurrency 16 (wrk), against the bare Flask + Redis baseline (``bench/baseline_app.py``,
    one GET and one SET) served by gunicorn with the same settings (``gunicorn.conf.py``);
(b) end-to-end persisted events/s for 500,000 events posted to ``/api/events/batch``
    (1,000 per request): clock from the first request to the moment the last event is in
    ``experiment_metrics`` with its rollups (same transaction), a real Celery worker (2
    processes, embedded beat) draining; baseline: a raw psycopg COPY of the same rows into a
    scratch table without indexes;
(c) wrk at the single-event accept rate for 60 s with the worker running: stream length and
    pending entries sampled every second (the backlog must stay bounded).

Usage: ``.venv/bin/python bench/bench_ingest.py [--events 500000] [--duration 15] [--soak 60]``
(needs ``wrk``: ``apt-get install -y wrk``). Prints a summary and writes
``bench/results/ingest.json``. Method and figures: bench/README.md ("Ingestion").
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg
import redis

from bench.bench_assign import (  # same servers, wrk harness and baseline as the assignment bench
    BENCH_IDENTITY,
    LUA_BASELINE,
    LUA_COMMON,
    Server,
    ephemeral_signer,
    free_port,
    lua,
    post_json,
    recreate_database,
    require_wrk,
    run_wrk,
    wait_http,
    wait_port,
)

BIN = Path(sys.executable).parent

LUA_TRACK = LUA_COMMON + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __TOKEN__"
local users = __USERS__
local run = "__RUN__"
function request()
  counter = counter + 1
  local n = math.random(users) - 1
  return wrk.format(nil, nil, nil, '{"molam_id": "user-' .. n .. '", "event_type": "conversion", "value": 12.5, '
    .. '"currency": "EUR", "metadata": {"source": "bench"}, "event_id": "' .. run .. '-' .. tid .. '-' .. counter .. '"}')
end
"""


class Worker:
    """``celery worker -B`` (2 processes, embedded beat) as its own process group."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int):
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "-B", "-s", str(log.with_suffix(".beat")),
             f"--concurrency={concurrency}", "--loglevel=WARNING"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def backlog(client: redis.Redis) -> tuple[int, int]:
    length = client.xlen("ingest:events")
    pending = 0
    try:
        for group in client.xinfo_groups("ingest:events"):
            pending += int(group["pending"])
    except redis.ResponseError:
        pass
    return length, pending


def count_events(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM experiment_metrics").fetchone()[0]


def wait_drained(client: redis.Redis, database_url: str, expected: int, timeout_s: float) -> float:
    """Seconds until ``expected`` rows are in PostgreSQL (polled every 50 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if count_events(database_url) >= expected:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"only {count_events(database_url)} of {expected} events persisted after {timeout_s} s")


def batch_bodies(experiment_id: str, users: int, total: int, per_request: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    bodies = []
    for r in range(total // per_request):
        events = []
        for i in range(per_request):
            events.append({
                "experiment_id": experiment_id,
                "event_id": f"b{seed}-{r}-{i}",
                "molam_id": f"user-{rng.randrange(users)}",
                "event_type": rng.choice(("conversion", "click", "view")),
                "value": round(rng.uniform(0, 200), 2),
                "currency": "EUR",
                "metadata": {"source": "bench"},
                "occurred_at": (start + timedelta(seconds=rng.randrange(86400 * 20))).isoformat(),
            })
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def post_all(url: str, token: str, bodies: list[bytes], connections: int) -> float:
    """POST every body over ``connections`` keep-alive connections; returns seconds taken."""
    host, port = url.split("//", 1)[1].split(":")
    queue = list(enumerate(bodies))
    lock = threading.Lock()
    failures: list[str] = []

    def sender() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                _, body = queue.pop()
            conn.request("POST", "/api/events/batch", body=body,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 202 or json.loads(payload)["rejected"]:
                failures.append(f"{response.status}: {payload[:300]!r}")
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=sender) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} batch requests failed, e.g. {failures[0]}")
    return time.monotonic() - started


def copy_baseline(database_url: str, bodies: list[bytes], variant_of: dict[str, str]) -> float:
    """Raw psycopg COPY of the same rows into a scratch table (no indexes, no constraints)."""
    rows = []
    received = datetime.now(timezone.utc).isoformat()
    for body in bodies:
        for e in json.loads(body)["events"]:
            rows.append((e["event_id"], e["experiment_id"], variant_of[e["molam_id"]], e["molam_id"], e["event_type"],
                         e["value"], e["currency"], json.dumps(e["metadata"]), e["occurred_at"], received))
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy_scratch")
        conn.execute("CREATE TABLE bench_copy_scratch (LIKE experiment_metrics INCLUDING DEFAULTS INCLUDING IDENTITY)")
        conn.commit()
        started = time.monotonic()
        with conn.cursor().copy(
            "COPY bench_copy_scratch (event_id, experiment_id, variant_id, molam_id, event_type, value, currency, "
            "metadata, occurred_at, received_at) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        elapsed = time.monotonic() - started
        conn.execute("DROP TABLE bench_copy_scratch")
        conn.commit()
    return elapsed


def assign_users(database_url: str, client: redis.Redis, experiment: dict, users: int) -> dict[str, str]:
    """Assignments as the assign endpoint leaves them: a row in PostgreSQL and its Redis copy."""
    variants = [v["id"] for v in experiment["variants"]]
    held = {f"user-{n}": variants[n % len(variants)] for n in range(users)}
    assigned_at = datetime.now(timezone.utc).isoformat()
    with psycopg.connect(database_url) as conn:
        with conn.cursor().copy("COPY experiment_assignments (experiment_id, variant_id, molam_id) FROM STDIN") as copy:
            for molam_id, variant_id in held.items():
                copy.write_row((experiment["id"], variant_id, molam_id))
        conn.commit()
    with client.pipeline(transaction=False) as pipe:
        for molam_id, variant_id in held.items():
            pipe.set(f"exp:asg:{experiment['id']}:{molam_id}",
                     json.dumps({"variant_id": variant_id, "assigned_at": assigned_at}, separators=(",", ":")),
                     ex=7 * 24 * 3600)
        pipe.execute()
    return held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run in (a)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "3")))
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--users", type=int, default=50_000, help="assigned users the events come from")
    parser.add_argument("--events", type=int, default=500_000, help="events posted in (b)")
    parser.add_argument("--batch", type=int, default=1000, help="events per batch request in (b)")
    parser.add_argument("--batch-connections", type=int, default=4, help="concurrent batch posters in (b)")
    parser.add_argument("--soak", type=int, default=60, help="seconds of (c)")
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"])
    parser.add_argument("--admin-database-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--database", default="molam_experiments_bench_ingest")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3"))
    parser.add_argument("--broker-url", default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/2"))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()

    if not require_wrk():
        return 2
    database_url = recreate_database(args.admin_database_url, args.database)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    redis.Redis.from_url(args.broker_url).flushdb()
    public_pem, mint = ephemeral_signer()
    admin_token, service_token = mint("ops_admin", "bench-admin"), mint("pay_module", "bench-pay")
    env = {
        **os.environ,
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "CELERY_BROKER_URL": args.broker_url,
        "MOLAM_ID_PUBLIC_KEY": public_pem,
        "RATE_LIMIT_ENABLED": "0",
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-prom-"),
        "PYTHONPATH": str(ROOT),
    }
    env.update(BENCH_IDENTITY)
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)

    logs = Path(tempfile.mkdtemp(prefix="bench-ingest-logs-"))
    api = Server("api.wsgi:app", free_port(), env, args, logs / "api.log")
    baseline = Server("bench.baseline_app:app", free_port(), env, args, logs / "baseline.log")
    worker: Worker | None = None
    results: dict = {
        "settings": {k: getattr(args, k) for k in (
            "duration", "connections", "workers", "worker_class", "threads", "wrk_threads", "celery_concurrency",
            "users", "events", "batch", "batch_connections", "soak")},
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    try:
        wait_http(f"{api.url}/healthz")
        wait_port(int(baseline.url.rsplit(":", 1)[1]))
        experiment = post_json(f"{api.url}/api/experiments", {
            "name": "bench-ingest",
            "variants": [
                {"name": "control", "traffic_share": 50, "is_control": True},
                {"name": "green", "traffic_share": 50},
            ],
        }, admin_token)
        post_json(f"{api.url}/api/experiments/{experiment['id']}/start", {}, admin_token)
        held = assign_users(database_url, client, experiment, args.users)
        track_url = f"{api.url}/api/experiments/{experiment['id']}/track"
        track_script = lambda run: lua(LUA_TRACK, token=service_token, users=args.users, run=run)

        if "a" in args.parts:
            base_script = lua(LUA_BASELINE, token=service_token, users=args.users)
            run_wrk(f"{baseline.url}/baseline", base_script, args.connections, args.warmup, args.wrk_threads)
            base = run_wrk(f"{baseline.url}/baseline", base_script, args.connections, args.duration, args.wrk_threads)
            run_wrk(track_url, track_script("warm"), args.connections, args.warmup, args.wrk_threads)
            track = run_wrk(track_url, track_script("a"), args.connections, args.duration, args.wrk_threads)
            results["a"] = {"baseline": base, "track": track, "ratio": track["rps"] / base["rps"]}
            print(f"(a) baseline {base['rps']:.0f} req/s p95 {base['p95_us'] / 1000:.1f} ms | track {track['rps']:.0f} "
                  f"req/s p95 {track['p95_us'] / 1000:.1f} ms | {100 * track['rps'] / base['rps']:.0f}% of baseline "
                  f"| errors {track['errors']}", flush=True)

        # Everything accepted so far is drained before (b) starts its clock; a probe event
        # written means the worker is up.
        worker = Worker(env, logs / "worker.log", args.celery_concurrency)
        post_json(track_url, {"molam_id": "user-0", "event_type": "view", "event_id": "probe"}, service_token)
        wait_drained(client, database_url, 1, 120)
        if "a" in results:
            started = time.monotonic()
            while backlog(client) != (0, 0):
                time.sleep(0.2)
            results["a"]["drained_after_s"] = time.monotonic() - started

        if "b" in args.parts:
            bodies = batch_bodies(experiment["id"], args.users, args.events, args.batch, seed=1)
            before = count_events(database_url)
            started = time.monotonic()
            posted_s = post_all(api.url, service_token, bodies, args.batch_connections)
            wait_drained(client, database_url, before + args.events, 600)
            end_to_end_s = time.monotonic() - started
            copy_s = copy_baseline(database_url, bodies, held)
            results["b"] = {
                "events": args.events,
                "accepted_s": posted_s,
                "accepted_per_s": args.events / posted_s,
                "end_to_end_s": end_to_end_s,
                "end_to_end_per_s": args.events / end_to_end_s,
                "copy_baseline_s": copy_s,
                "copy_baseline_per_s": args.events / copy_s,
            }
            print(f"(b) {args.events} events: accepted in {posted_s:.1f} s ({args.events / posted_s:.0f}/s), persisted "
                  f"with rollups in {end_to_end_s:.1f} s ({args.events / end_to_end_s:.0f}/s end to end); raw COPY "
                  f"baseline {copy_s:.1f} s ({args.events / copy_s:.0f}/s)", flush=True)

        if "c" in args.parts:
            samples: list[tuple[float, int, int, int]] = []
            stop = threading.Event()
            before = count_events(database_url)

            def sample() -> None:
                t0 = time.monotonic()
                while not stop.is_set():
                    length, pending = backlog(client)
                    samples.append((round(time.monotonic() - t0, 1), length, pending, count_events(database_url) - before))
                    stop.wait(1.0)

            sampler = threading.Thread(target=sample)
            sampler.start()
            soak = run_wrk(track_url, track_script("c"), args.connections, args.soak, args.wrk_threads)
            stop.set()
            sampler.join()
            drain_s = wait_drained(client, database_url, before + soak["requests"] - soak["non_2xx"], 120)
            with psycopg.connect(database_url) as conn:
                # recorded_at is the writing transaction's start: a lower bound by one batch's time.
                latency = conn.execute(
                    "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
                    "(ORDER BY extract(epoch FROM recorded_at - received_at)), "
                    "max(extract(epoch FROM recorded_at - received_at)) "
                    "FROM experiment_metrics WHERE event_id LIKE 'c-%'"
                ).fetchone()
            lengths = [s[1] for s in samples]
            half = len(lengths) // 2
            results["c"] = {
                "track": soak,
                "samples": samples,
                "max_stream_length": max(lengths),
                "max_pending": max(s[2] for s in samples),
                "mean_length_first_half": statistics.mean(lengths[:half]) if half else 0,
                "mean_length_second_half": statistics.mean(lengths[half:]) if half else 0,
                "drained_after_s": drain_s,
                "accept_to_write_s": {"p50": latency[0][0], "p95": latency[0][1], "p99": latency[0][2],
                                      "max": float(latency[1])},
                "persisted_per_s": (samples[-1][3] / samples[-1][0]) if samples and samples[-1][0] else 0,
            }
            print(f"(c) {args.soak} s at {soak['rps']:.0f} req/s (p95 {soak['p95_us'] / 1000:.1f} ms) with the worker "
                  f"draining: stream length max {max(lengths)} entries (mean {results['c']['mean_length_first_half']:.0f} "
                  f"first half, {results['c']['mean_length_second_half']:.0f} second half), pending max "
                  f"{results['c']['max_pending']}; the rest written {drain_s:.1f} s after the load stopped; accepted → "
                  f"written p50 {latency[0][0]:.2f} s, p95 {latency[0][1]:.2f} s, max {float(latency[1]):.2f} s", flush=True)
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
        baseline.stop()
    results["load_after"] = os.getloadavg()
    results["logs"] = str(logs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"written {args.output}; logs in {logs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

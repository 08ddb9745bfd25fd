"""The bandit end to end through the running platform: API (gunicorn), Celery worker
and Celery beat as in production, SIRA on short intervals.

Creates a bandit experiment with two arms (control converts at 10%, the other at
12%), then sends simulated users one after another through the real endpoints: each
user is assigned (``POST /assign``) and, if the user converts (with the rate of the
arm they got), the conversion is tracked right away (``POST /track``).  Conversions
reach the rollups through the ingestion drain, ``sira.recompute_posteriors`` turns
them into weights and publishes them to Redis, and the next assignments follow them.

Pass: the better arm receives at least 75% of the last quarter's new users.  Also
printed: share per quarter, users/s, how many weight updates the run saw, and the
final results/insights as the API serves them.

Run:  .venv/bin/python bench/bench_bandit_e2e.py [--users 20000] [--concurrency 8]
      [--recompute-interval 1] [--seed 1]
Uses its own PostgreSQL database and two Redis databases (cache, broker), which
must be empty; everything it starts is stopped at the end.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg
import redis
from psycopg import sql

from bench.bench_assign import BENCH_IDENTITY, ephemeral_signer

BIN = Path(sys.executable).parent
RATES = {"Control": 0.10, "Better": 0.12}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recreate_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


class Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if not hasattr(self.local, "conn"):
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.local.conn

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {token or self.token}", "Content-Type": "application/json"}
        for attempt in range(3):
            conn = self._connection()
            try:
                conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                return response.status, (json.loads(payload) if payload else None)
            except (http.client.HTTPException, OSError):
                conn.close()
                del self.local.conn
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")


def wait_http(client: Client, path: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, _ = client.request("GET", path)
            if status < 500:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not answer within {timeout_s} s")
        time.sleep(0.3)


def start(name: str, command: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    log = (logs / f"{name}.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8, help="simulated users in flight at once")
    parser.add_argument("--recompute-interval", type=float, default=1.0, help="SIRA_RECOMPUTE_INTERVAL (s)")
    parser.add_argument("--fail-fast-interval", type=float, default=5.0, help="SIRA_FAIL_FAST_INTERVAL (s)")
    parser.add_argument("--drain-interval", type=float, default=0.25, help="INGEST_DRAIN_INTERVAL (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--admin-database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="molam_experiments_bench_e2e")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "bandit_e2e.json")
    args = parser.parse_args()

    for url in (args.redis_url, args.broker_url):
        if redis.Redis.from_url(url).dbsize():
            print(f"{url} is not empty; pass other --redis-url/--broker-url", file=sys.stderr)
            return 2
    database_url = recreate_database(args.admin_database_url, args.database)
    public_pem, mint = ephemeral_signer()
    var_dir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    env = {
        **os.environ,
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "CELERY_BROKER_URL": args.broker_url,
        "MOLAM_ID_PUBLIC_KEY": public_pem,
        "MOLAM_VAR_DIR": str(var_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(var_dir / "prometheus"),
        "RATE_LIMIT_ENABLED": "0",
        "SIRA_RECOMPUTE_INTERVAL": str(args.recompute_interval),
        "SIRA_FAIL_FAST_INTERVAL": str(args.fail_fast_interval),
        "INGEST_DRAIN_INTERVAL": str(args.drain_interval),
        "PYTHONPATH": str(ROOT),
    }
    env.update(BENCH_IDENTITY)
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)

    port = free_port()
    logs = var_dir
    processes = [
        start("api", [str(BIN / "gunicorn"), "--config", str(ROOT / "gunicorn.conf.py"), "-b", f"127.0.0.1:{port}",
                      "--log-level", "warning", "api.wsgi:app"], env, logs),
        start("worker", [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "--loglevel=WARNING", "--concurrency=2"], env, logs),
        start("beat", [str(BIN / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel=WARNING",
                       "-s", str(var_dir / "celerybeat-schedule")], env, logs),
    ]
    admin = Client(port, mint("ops_admin", "bench-ops_admin"))
    service = Client(port, mint("pay_module", "bench-pay_module"))
    try:
        wait_http(admin, "/healthz")
        status, experiment = admin.request("POST", "/api/experiments", {
            "name": "Bandit end to end",
            "mode": "bandit",
            "targeting": {},
            "guardrails": [],
            "bandit": {"min_samples": 100, "floor": 0.01},
            "variants": [
                {"name": "Control", "config": {"arm": "control"}, "traffic_share": 50, "is_control": True},
                {"name": "Better", "config": {"arm": "better"}, "traffic_share": 50},
            ],
        })
        assert status == 201, experiment
        experiment_id = experiment["id"]
        status, body = admin.request("POST", f"/api/experiments/{experiment_id}/start")
        assert status == 200, body
        names = {v["id"]: v["name"] for v in experiment["variants"]}

        assigned: list[str | None] = [None] * args.users
        tracked = [0]
        errors: list[str] = []
        lock = threading.Lock()

        def one_user(index: int) -> None:
            molam_id = f"e2e-{args.seed}-{index}"
            status, body = service.request("POST", f"/api/experiments/{experiment_id}/assign", {"molam_id": molam_id})
            if status != 200 or not body.get("eligible"):
                errors.append(f"assign {status}: {body}")
                return
            variant = names[body["variant_id"]]
            assigned[index] = variant
            if random.Random(f"{args.seed}-{index}").random() < RATES[variant]:
                status, body2 = service.request("POST", f"/api/experiments/{experiment_id}/track", {
                    "molam_id": molam_id, "variant_id": body["variant_id"], "event_type": "conversion",
                    "value": 25.0, "event_id": f"conv-{molam_id}",
                })
                if status != 202:
                    errors.append(f"track {status}: {body2}")
                    return
                with lock:
                    tracked[0] += 1

        started = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            for n, _ in enumerate(pool.map(one_user, range(args.users)), start=1):
                if n % 2000 == 0:
                    elapsed = time.monotonic() - started
                    window = [a for a in assigned[n - 2000:n] if a]
                    print(f"  {n:>6} users in {elapsed:5.1f} s; share of 'Better' among the last 2,000: "
                          f"{window.count('Better') / max(len(window), 1):.1%}", flush=True)
        elapsed = time.monotonic() - started

        # Let the last conversions land, then read what the platform reports.
        deadline = time.monotonic() + 60
        while True:
            status, results = admin.request("GET", f"/api/experiments/{experiment_id}/results")
            converted = sum(v["metrics"]["conversion"]["users"] for v in results["variants"])
            if converted >= tracked[0] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        status, insights = admin.request("GET", f"/api/experiments/{experiment_id}/insights")
        status, history = admin.request("GET", f"/api/experiments/{experiment_id}/bandit/history?limit=5000")
        updates = len(history["snapshots"]) if status == 200 else None

        quarter = args.users // 4
        shares = []
        for q in range(4):
            block = [a for a in assigned[q * quarter:(q + 1) * quarter] if a]
            shares.append(block.count("Better") / max(len(block), 1))
        summary = {
            "users": args.users,
            "assigned": sum(1 for a in assigned if a),
            "tracked_conversions": tracked[0],
            "conversions_in_results": converted,
            "errors": len(errors),
            "seconds": round(elapsed, 1),
            "users_per_second": round(args.users / elapsed, 1),
            "better_share_by_quarter": [round(s, 4) for s in shares],
            "better_share_last_quarter": round(shares[-1], 4),
            "weight_snapshots": updates,
            "final": [
                {k: v[k] for k in ("name", "assigned_users", "weight", "prob_best", "alpha", "beta")}
                | {"rate": v["metrics"]["conversion"]["rate"]}
                for v in results["variants"]
            ],
            "recommendation": insights.get("recommendation"),
            "recompute_interval_s": args.recompute_interval,
            "passed": shares[-1] >= 0.75 and not errors,
        }
        print(json.dumps(summary, indent=2))
        if errors:
            print("first errors:", *errors[:5], sep="\n  ", file=sys.stderr)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
        return 0 if summary["passed"] else 1
    finally:
        stop(processes)
        for url in (args.redis_url, args.broker_url):
            redis.Redis.from_url(url).flushdb()
        print(f"logs: {logs}")


if __name__ == "__main__":
    raise SystemExit(main())

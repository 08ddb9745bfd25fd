"""Benchmark of the assignment hot path against a bare Flask + Redis baseline.

Starts, the production way (gunicorn, ``gunicorn.conf.py``), the API on a
PostgreSQL database and Redis database of its own, and ``bench/baseline_app.py``
with the same server settings; loads both with ``wrk`` at each concurrency and
prints requests/s and p50/p95/p99 for

* ``baseline``  - POST /baseline: one Redis GET and one SET;
* ``returning`` - POST /assign for users already assigned (cached in Redis);
* ``new``       - POST /assign with a unique molam_id per request (decision + INSERT).

Usage: ``.venv/bin/python bench/bench_assign.py [--duration 15] [--connections 16 64]``
(needs ``wrk``: ``apt-get install -y wrk``). Results are printed as a Markdown table
and written to ``bench/results/assign.json``. Figures and method: bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jwt
import psutil
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg import sql

BIN = Path(sys.executable).parent

LUA_COMMON = """
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""

LUA_RETURNING = LUA_COMMON + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __TOKEN__"
local users = __USERS__
function request()
  counter = counter + 1
  local n = math.random(users) - 1
  return wrk.format(nil, nil, nil, '{"molam_id": "returning-' .. n .. '", "country": "SN", "lang": "fr", "txn_count": 7}')
end
"""

LUA_NEW = LUA_COMMON + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __TOKEN__"
local run = "__RUN__"
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"molam_id": "new-' .. run .. '-' .. tid .. '-' .. counter .. '", "country": "SN", "lang": "fr", "txn_count": 7}')
end
"""

LUA_BASELINE = LUA_COMMON + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __TOKEN__"
local users = __USERS__
function request()
  local n = math.random(users) - 1
  return wrk.format(nil, nil, nil, '{"molam_id": "returning-' .. n .. '", "country": "SN", "lang": "fr", "txn_count": 7}')
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lua(template: str, **values: object) -> str:
    for name, value in values.items():
        template = template.replace(f"__{name.upper()}__", str(value))
    return template


def wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def recreate_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}"


def post_json(url: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}: {exc.code} {exc.read().decode()[:500]}") from exc


class Server:
    """A gunicorn process group (started with the project's gunicorn.conf.py)."""

    def __init__(self, app: str, port: int, env: dict[str, str], args: argparse.Namespace, log: Path):
        command = [
            str(BIN / "gunicorn"), "--config", str(ROOT / "gunicorn.conf.py"),
            "-w", str(args.workers), "-k", args.worker_class, "--threads", str(args.threads),
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", app,
        ]
        self.log = log.open("w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def cpu_seconds(self) -> float:
        """CPU time used so far by the workers (user + system): a load-independent cost."""
        total = 0.0
        for pid in self.worker_pids():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def postgres_cpu_seconds(database: str) -> float:
    """CPU used so far by the PostgreSQL backends serving ``database`` (the API's pool)."""
    total = 0.0
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(database in part for part in (process.info["cmdline"] or [])):
                times = process.cpu_times()
                total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_wrk(url: str, script: str, connections: int, duration: int, threads: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s", "-s", path, url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(path)
    line = next(l for l in out.splitlines() if l.startswith("WRK_RESULT "))
    result = json.loads(line.split(" ", 1)[1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def profile(server: Server, seconds: int, out: Path) -> None:
    pid = server.worker_pids()[0]
    done = subprocess.run(
        [str(BIN / "py-spy"), "record", "-p", str(pid), "-d", str(seconds), "-f", "raw" if out.suffix == ".txt" else "speedscope", "-o", str(out), "--nonblocking", "--gil"],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        print(f"py-spy failed on {pid}: {done.stderr.strip()[-500:]}", file=sys.stderr)


def require_wrk() -> bool:
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return False
    return True


#: The iss and aud the benches' tokens carry; production settings require both.
#: What production requires besides the key: the tokens' issuer and audience, the audit chain's key.
BENCH_IDENTITY = {
    "MOLAM_ID_ISSUER": "https://id.molam.bench",
    "MOLAM_ID_AUDIENCE": "molam-experiments-bench",
    "AUDIT_HMAC_KEY": "bench-audit-key-" + "0" * 48,
}


def ephemeral_signer(ttl_s: int = 6 * 3600):
    """A throwaway RS256 key pair: (public PEM for MOLAM_ID_PUBLIC_KEY, mint(role, sub) -> token).

    Tokens carry ``BENCH_IDENTITY``'s issuer and audience; put those variables in the server's environment.
    """
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    now = int(time.time())

    def mint(role: str, sub: str) -> str:
        claims = {"sub": sub, "roles": [role], "iat": now, "exp": now + ttl_s,
                  "iss": BENCH_IDENTITY["MOLAM_ID_ISSUER"], "aud": BENCH_IDENTITY["MOLAM_ID_AUDIENCE"]}
        return jwt.encode(claims, private, algorithm="RS256")

    return public_pem, mint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk warm-up before each server's runs")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "4")))
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per scenario (median kept)")
    parser.add_argument("--users", type=int, default=5000, help="returning users assigned before the runs")
    parser.add_argument("--rate-limit", action="store_true", help="keep rate limiting on (limit set very high) to measure its cost")
    parser.add_argument("--without-pre-ping", action="store_true", help="serve the API with pool_pre_ping off (to measure its cost)")
    parser.add_argument("--scenarios", nargs="+", default=["baseline", "returning", "new"])
    parser.add_argument("--admin-database-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--database", default="molam_experiments_bench_assign")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    parser.add_argument("--profile", type=Path, help="record a py-spy profile (GIL-holding samples) of one worker during --profile-scenario to this file (.txt: raw)")
    parser.add_argument("--profile-scenario", default="returning", choices=["baseline", "returning", "new"])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "assign.json")
    args = parser.parse_args()

    if not require_wrk():
        return 2

    database_url = recreate_database(args.admin_database_url, args.database)
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    public_pem, mint = ephemeral_signer()
    admin_token, service_token = mint("ops_admin", "bench-admin"), mint("pay_module", "bench-pay")
    metrics_dir = Path(tempfile.mkdtemp(prefix="bench-prom-"))
    env = {
        **os.environ,
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "MOLAM_ID_PUBLIC_KEY": public_pem,
        "RATE_LIMIT_ENABLED": "1" if args.rate_limit else "0",
        "ASSIGN_RATE_LIMIT": "100000000/minute",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": str(ROOT),
    }
    env.update(BENCH_IDENTITY)
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)

    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    api_module = "bench.api_without_pre_ping:app" if args.without_pre_ping else "api.wsgi:app"
    api = Server(api_module, free_port(), env, args, logs / "api.log")
    baseline = Server("bench.baseline_app:app", free_port(), env, args, logs / "baseline.log")
    results: dict = {
        "settings": {k: getattr(args, k) for k in ("duration", "rounds", "workers", "worker_class", "threads", "wrk_threads", "users", "rate_limit", "without_pre_ping")},
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "runs": {},
    }
    try:
        wait_http(f"{api.url}/healthz")
        wait_port(int(baseline.url.rsplit(":", 1)[1]))
        experiment = post_json(
            f"{api.url}/api/experiments",
            {
                "name": "bench",
                "targeting": {"country": ["SN", "FR"], "lang": ["fr"], "min_txn": 1},
                "variants": [
                    {"name": "control", "config": {"button_color": "blue"}, "traffic_share": 50, "is_control": True},
                    {"name": "green", "config": {"button_color": "green"}, "traffic_share": 50},
                ],
            },
            admin_token,
        )
        post_json(f"{api.url}/api/experiments/{experiment['id']}/start", {}, admin_token)
        assign_url = f"{api.url}/api/experiments/{experiment['id']}/assign"
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda n: post_json(assign_url, {"molam_id": f"returning-{n}", "country": "SN", "lang": "fr", "txn_count": 7}, service_token), range(args.users)))

        scripts = {
            "baseline": (f"{baseline.url}/baseline", lua(LUA_BASELINE, token=service_token, users=args.users)),
            "returning": (assign_url, lua(LUA_RETURNING, token=service_token, users=args.users)),
            "new": (assign_url, None),
        }
        for scenario in args.scenarios:
            url, script = scripts[scenario]
            run_wrk(url, script or lua(LUA_NEW, token=service_token, run="warm"), max(args.connections), args.warmup, args.wrk_threads)
        # Other work on the machine comes and goes: interleave the scenarios in rounds
        # and keep, per scenario, the round with the median request rate.
        samples: dict[str, list[dict]] = {}
        for round_number in range(args.rounds):
            for connections in args.connections:
                for scenario in args.scenarios:
                    url, script = scripts[scenario]
                    script_now = script or lua(LUA_NEW, token=service_token, run=f"r{round_number}-c{connections}-{time.time_ns()}")
                    profiling = args.profile and scenario == args.profile_scenario and connections == args.connections[0] and round_number == 0
                    if profiling:
                        profiler = ThreadPoolExecutor(max_workers=1).submit(
                            profile, baseline if scenario == "baseline" else api, max(1, args.duration - 2), args.profile
                        )
                    server = baseline if scenario == "baseline" else api
                    cpu_before, pg_before = server.cpu_seconds(), postgres_cpu_seconds(args.database)
                    result = run_wrk(url, script_now, connections, args.duration, args.wrk_threads)
                    result["server_cpu_us_per_request"] = (server.cpu_seconds() - cpu_before) / max(1, result["requests"]) * 1e6
                    result["postgres_cpu_us_per_request"] = (postgres_cpu_seconds(args.database) - pg_before) / max(1, result["requests"]) * 1e6
                    if profiling:
                        profiler.result()
                    result["load"] = os.getloadavg()[0]
                    samples.setdefault(f"{scenario}@{connections}", []).append(result)
                    print(
                        f"round {round_number} {scenario:>9} c={connections:<3} {result['rps']:8.0f} req/s  p50 {result['p50_us'] / 1000:6.2f} ms  "
                        f"p95 {result['p95_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  errors {result['errors']}  "
                        f"cpu {result['server_cpu_us_per_request']:.0f}+{result['postgres_cpu_us_per_request']:.0f}(pg) us/req  load {result['load']:.1f}",
                        flush=True,
                    )
        for key, runs_of_key in samples.items():
            ordered = sorted(runs_of_key, key=lambda r: r["rps"])
            summary = {**ordered[len(ordered) // 2], "all_rps": [round(r["rps"]) for r in runs_of_key]}
            scenario, connections = key.split("@")
            baselines = samples.get(f"baseline@{connections}")
            if baselines and scenario != "baseline":
                # Each round's run against the baseline run just before it (same machine load).
                ratios = sorted(r["rps"] / b["rps"] for r, b in zip(runs_of_key, baselines))
                summary["paired_ratios"] = [round(x, 3) for x in ratios]
                summary["median_paired_ratio"] = ratios[len(ratios) // 2]
            results["runs"][key] = summary
        with urllib.request.urlopen(f"{api.url}/metrics", timeout=10) as response:
            exposition = response.read().decode()
        results["metrics_sample"] = [l for l in exposition.splitlines() if l.startswith(("experiment_assignments_total", "sira_decisions_latency_seconds_count"))]
    finally:
        api.stop()
        baseline.stop()
    results["load_after"] = os.getloadavg()

    runs = results["runs"]
    lines = [
        "| scenario | connections | req/s (median) | % of baseline (median of paired rounds) | p50 ms | p95 ms | p99 ms | errors | gunicorn CPU µs/req | PostgreSQL CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, result in runs.items():
        scenario, connections = key.split("@")
        ratio = f"{100 * result['median_paired_ratio']:.0f}%" if "median_paired_ratio" in result else "100%"
        lines.append(
            f"| {scenario} | {connections} | {result['rps']:.0f} | {ratio} | {result['p50_us'] / 1000:.2f} | "
            f"{result['p95_us'] / 1000:.2f} | {result['p99_us'] / 1000:.2f} | {result['errors']} | {result['server_cpu_us_per_request']:.0f} | {result['postgres_cpu_us_per_request']:.0f} |"
        )
    table = "\n".join(lines)
    results["table"] = table
    print()
    print(table)
    print(f"\nload average before/after: {results['load_before']} / {results['load_after']}; metrics: {results.get('metrics_sample')}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The project vs Sixpack vs a bare Flask+Redis ceiling, in interleaved rounds on one machine.

Starts three servers and measures them round after round, so that load from other
work on the machine hits all of them alike: read the **ratios** (each round's
project figure over the same round's Sixpack or ceiling figure), not absolute rates.

* **the project**, the production way and with its shipped defaults (rate limiting on):
  ``APP_ENV=production``, ``gunicorn -c gunicorn.conf.py api.wsgi:app``, a Celery worker
  (``--concurrency=2``) and beat, a scratch database ``sbs_<hex>`` (dropped at the end),
  Redis databases 11 (app) and 10 (broker);
* **Sixpack 2.7.0** (seatgeek; Python 2 + Redis), its documented 2 sync gunicorn workers,
  Redis database 13 (skipped, with a message, when ``bench/compare/setup.sh`` found no Python 2.7);
* **the ceiling**: ``ceiling_app.py``, one Redis GET + one SET per request, under the project's
  gunicorn settings and virtualenv, Redis database 12.

``--before PATH`` adds a second checkout of the project (e.g. an older commit) run the same
way beside the first (Redis databases 9 and 8), for a before/after table from one run.

Cases per round and concurrency (``wrk -t2``): first-time assign on a new experiment vs
Sixpack participate on a flushed database; returning assign (20,000 users assigned
beforehand) vs Sixpack participate with 20,000 seeded participants; the ceiling; track on
assigned users (the worker persisting meanwhile) vs Sixpack convert; first-time assign in a
bandit experiment (the SIRA draw) at the highest concurrency. At the end it checks that every
accepted ``track`` event was persisted exactly once.

    make bench-compare      # = bash bench/compare/setup.sh, then this script with the defaults
    .venv/bin/python bench/compare/side_by_side.py [--rounds 3] [--duration 15] [--conc 16,64]
        [--redis-url redis://127.0.0.1:6379] [--before PATH] [--json out.json]

Needs PostgreSQL (``--postgres-url``, default ``postgresql://postgres@127.0.0.1:5432/postgres``;
it creates and drops the scratch databases), a Redis server whose databases 8-13 it may FLUSH,
and wrk. Results: a Markdown table on stdout and ``bench/results/side_by_side.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

import psycopg
import redis

from bench.bench_assign import BENCH_IDENTITY, ephemeral_signer, require_wrk

LUA = HERE / "lua"
SIXPACK = HERE / "sixpack"
VENVS = Path(os.environ.get("BENCH_VENVS", Path.home() / ".cache" / "molam-bench"))
POOL = 20_000
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")


def cpu_seconds(server: subprocess.Popen | None) -> float:
    """User + system CPU of a server's worker processes so far (load-independent cost per request)."""
    if server is None:
        return 0.0
    import psutil

    total = 0.0
    for child in psutil.Process(server.pid).children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def wrk(url: str, script: Path, conc: int, duration: int, env: dict[str, str], server: subprocess.Popen | None = None) -> dict:
    cmd = ["wrk", "-t2", f"-c{conc}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url]
    before = cpu_seconds(server)
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env)).stdout
    spent = cpu_seconds(server) - before
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            result = json.loads(line[8:])
            result["cpu_us_per_request"] = spent / result["requests"] * 1e6 if server and result["requests"] else None
            return result
    raise RuntimeError(out)


class Servers:
    """Processes started by the harness, each in its own session, all stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], cwd: Path, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
        out = open(log, "w") if log else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(os.environ, **env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class Project:
    """One checkout of the project started the production way, with its own database and Redis dbs."""

    def __init__(self, label: str, path: Path, redis_base: str, app_db: int, broker_db: int, postgres_url: str,
                 public_pem: str, workdir: Path):
        self.label, self.path = label, path
        self.db = f"sbs_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.postgres_url = postgres_url
        self.database_url = psycopg.conninfo.make_conninfo(postgres_url, dbname=self.db)
        self.var = workdir / label
        self.var.mkdir(parents=True, exist_ok=True)
        self.redis_app, self.redis_broker = f"{redis_base}/{app_db}", f"{redis_base}/{broker_db}"
        self.env = {
            "APP_ENV": "production", "DATABASE_URL": self._url(), "REDIS_URL": self.redis_app,
            "CELERY_BROKER_URL": self.redis_broker, "MOLAM_ID_PUBLIC_KEY": public_pem, "MOLAM_VAR_DIR": str(self.var),
            "PORT": str(self.port), **BENCH_IDENTITY,
        }

    def _url(self) -> str:
        params = psycopg.conninfo.conninfo_to_dict(self.database_url)
        return (f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
                f"{params.get('port', 5432)}/{self.db}")

    def start(self, servers: Servers) -> None:
        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        for url in (self.redis_app, self.redis_broker):
            redis.Redis.from_url(url).flushdb()
        venv = self.path / ".venv" / "bin"
        subprocess.run([str(venv / "alembic"), "upgrade", "head"], cwd=self.path, env=dict(os.environ, **self.env),
                       check=True, capture_output=True)
        self.api = servers.start([str(venv / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}",
                                  "api.wsgi:app"], self.path, self.env, self.var / "api.log")
        servers.start([str(venv / "celery"), "-A", "tasks.celery_app", "worker", "--concurrency=2", "--loglevel=WARNING"],
                      self.path, self.env, self.var / "worker.log")
        servers.start([str(venv / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel=WARNING", "-s",
                       str(self.var / "beat")], self.path, self.env, self.var / "beat.log")
        wait_http(f"{self.base}/healthz")

    def call(self, method: str, path: str, body: object, token: str) -> object:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def new_experiment(self, admin: str, mode: str = "ab") -> str:
        experiment = self.call("POST", "/api/experiments", {
            "name": f"sbs-{uuid.uuid4().hex[:6]}", "mode": mode, "targeting": {"country": ["SN"], "lang": ["fr"]},
            "variants": [{"name": "a", "config": {}, "traffic_share": 50, "is_control": True},
                         {"name": "b", "config": {}, "traffic_share": 50}]}, admin)
        self.call("POST", f"/api/experiments/{experiment['id']}/start", None, admin)
        return experiment["id"]

    def clicks_accepted(self) -> int:
        """``experiment_metrics_accepted_total`` for clicks: what the API accepted (summed over its workers).

        (``experiment_metrics_total`` counts persisted events, in the worker's exporter, not the API's.)
        """
        text = urllib.request.urlopen(f"{self.base}/metrics", timeout=30).read().decode()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("experiment_metrics_accepted_total{") and 'event_type="click"' in line))

    def clicks_persisted(self) -> int:
        with psycopg.connect(self._url()) as conn:
            return conn.execute("SELECT count(*) FROM experiment_metrics WHERE event_type = 'click'").fetchone()[0]

    def drop(self) -> None:
        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


def profiled(project: Project, out: Path | None, name: str, seconds: int):
    """Run py-spy on one gunicorn worker of ``project`` for ``seconds`` (in the background) when ``out`` is set."""
    if out is None:
        return None
    import psutil

    worker = psutil.Process(project.api.pid).children()[0].pid
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(BIN / "py-spy"), "record", "-p", str(worker), "-d", str(seconds), "-r", "200", "-f", "raw",
                             "-o", str(out / f"{project.label}-{name}.txt"), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sixpack_available() -> bool:
    return (VENVS / "sixpack" / "bin" / "gunicorn").exists()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--pool", type=int, default=POOL, help="returning users assigned (and Sixpack participants seeded) beforehand")
    parser.add_argument("--conc", default="16,64", help="comma-separated wrk connection counts")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
                        help="Redis server (no database); databases 8-13 are flushed")
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--before", type=Path, help="another checkout of the project to measure beside this one")
    parser.add_argument("--no-bandit", action="store_true", help="skip the bandit first-time case")
    parser.add_argument("--profile", type=Path, help="directory: py-spy profiles of one project worker in the last round")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "side_by_side.json")
    args = parser.parse_args()
    if not require_wrk():
        return 1
    redis_base = args.redis_url.rstrip("/")
    with_sixpack = sixpack_available()
    if not with_sixpack:
        print(f"Sixpack venv not found under {VENVS}/sixpack (no Python 2.7 when bench/compare/setup.sh ran): "
              "the Sixpack columns are SKIPPED; the project and ceiling columns still run.", flush=True)
    public_pem, mint = ephemeral_signer()
    admin, service = mint("ops_admin", "bench-admin"), mint("pay_module", "bench-pay_module")
    workdir = Path(tempfile.mkdtemp(prefix="sbs-"))
    projects = [Project("project", ROOT, redis_base, 11, 10, args.postgres_url, public_pem, workdir)]
    if args.before:
        projects.append(Project("before", args.before.resolve(), redis_base, 9, 8, args.postgres_url, public_pem, workdir))
    servers = Servers()

    def interrupted(*_: object) -> None:
        servers.stop()
        for project in projects:
            try:
                project.drop()
            except psycopg.Error:
                pass
        os._exit(1)  # not sys.exit: a pending thread pool would keep the process waiting

    signal.signal(signal.SIGTERM, interrupted)
    results: dict[str, dict[int, list[dict]]] = {}
    concs = [int(c) for c in args.conc.split(",")]
    try:
        for project in projects:
            project.start(servers)
        six_redis = f"{redis_base}/13"
        six_server = None
        six_port, ceiling_port = free_port(), free_port()
        if with_sixpack:
            parsed = redis.Redis.from_url(six_redis).connection_pool.connection_kwargs
            config = workdir / "sixpack.yml"
            config.write_text((SIXPACK / "config.yml.in").read_text().format(host=parsed.get("host", "127.0.0.1"),
                                                                            port=parsed.get("port", 6379), db=13))
            redis.Redis.from_url(six_redis).flushdb()
            six_bin = VENVS / "sixpack" / "bin"
            six_server = servers.start([str(six_bin / "gunicorn"), "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{six_port}",
                           "--log-level", "warning", "sixpack.server:start"], SIXPACK, {"SIXPACK_CONFIG": str(config)},
                          workdir / "sixpack.log")
            wait_http(f"http://127.0.0.1:{six_port}/_status")
        ceiling_redis = f"{redis_base}/12"
        redis.Redis.from_url(ceiling_redis).flushdb()
        ceiling_server = servers.start([str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "-b", f"127.0.0.1:{ceiling_port}",
                       "--chdir", str(HERE), "ceiling_app:app"], ROOT,
                      {"REDIS_URL": ceiling_redis, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "ceiling-prom"), "PYTHONPATH": str(ROOT)},
                      workdir / "ceiling.log")
        wait_http(f"http://127.0.0.1:{ceiling_port}/hello")

        returning: dict[str, str] = {}
        for project in projects:
            returning[project.label] = project.new_experiment(admin)
            url = f"/api/experiments/{returning[project.label]}/assign"
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i, p=project, u=url: p.call("POST", u, {"molam_id": f"u{i}", "country": "SN", "lang": "fr"},
                                                                service), range(1, args.pool + 1)))
            print(f"{project.label}: {args.pool} users assigned", flush=True)

        def record(label: str, conc: int, r: dict) -> None:
            results.setdefault(label, {}).setdefault(conc, []).append(r)
            errors = r["err_status"] + r["err_timeout"] + r["err_connect"]
            cpu = r.get("cpu_us_per_request")
            line = (f"  {label:26s} c={conc:<3d} {r['rps']:8.0f} req/s  p95 {r['p95_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f}"
                    f"  errors {errors}")
            print(line + (f"  server CPU {cpu:6.0f} µs/req" if cpu else ""), flush=True)

        six_url = f"http://127.0.0.1:{six_port}"
        six_env = {"SIXPACK_CONFIG": str(workdir / "sixpack.yml")}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}", flush=True)
            for conc in concs:
                if with_sixpack:
                    redis.Redis.from_url(six_redis).flushdb()
                    record("sixpack-fresh", conc, wrk(six_url, LUA / "participate.lua", conc, args.duration, {"POOL": "1000000"}, six_server))
                last = rnd == args.rounds - 1 and conc == min(concs)
                spy_s = max(1, args.duration - 2)
                for project in projects:
                    env = {"TOKEN": service, "POOL": "1000000", "EXP": project.new_experiment(admin)}
                    spy = profiled(project, args.profile if last else None, "fresh", spy_s)
                    record(f"{project.label}-fresh", conc, wrk(project.base, LUA / "assign.lua", conc, args.duration, env, project.api))
                    spy and spy.wait()
                if with_sixpack:
                    redis.Redis.from_url(six_redis).flushdb()
                    subprocess.run([str(VENVS / "sixpack" / "bin" / "python"), "seed.py", str(args.pool), "bench_exp"], cwd=SIXPACK,
                                   env=dict(os.environ, **six_env), check=True, capture_output=True)
                    record("sixpack-returning", conc, wrk(six_url, LUA / "participate.lua", conc, args.duration, {"POOL": str(args.pool)}, six_server))
                for project in projects:
                    env = {"TOKEN": service, "POOL": str(args.pool), "EXP": returning[project.label]}
                    spy = profiled(project, args.profile if last else None, "returning", spy_s)
                    record(f"{project.label}-returning", conc, wrk(project.base, LUA / "assign.lua", conc, args.duration, env, project.api))
                    spy and spy.wait()
                record("ceiling", conc, wrk(f"http://127.0.0.1:{ceiling_port}/redis", LUA / "stats.lua", conc, args.duration, {}, ceiling_server))
                if with_sixpack:
                    record("sixpack-convert", conc, wrk(six_url, LUA / "convert.lua", conc, args.duration, {"POOL": str(args.pool)}, six_server))
                for project in projects:
                    env = {"TOKEN": service, "POOL": str(args.pool), "EXP": returning[project.label]}
                    spy = profiled(project, args.profile if last else None, "track", spy_s)
                    record(f"{project.label}-track", conc, wrk(project.base, LUA / "track.lua", conc, args.duration, env, project.api))
                    spy and spy.wait()
                if not args.no_bandit and conc == max(concs):
                    for project in projects:
                        env = {"TOKEN": service, "POOL": "1000000", "EXP": project.new_experiment(admin, mode="bandit")}
                        record(f"{project.label}-bandit-fresh", conc, wrk(project.base, LUA / "assign.lua", conc, args.duration, env, project.api))

        persisted: dict[str, dict[str, int]] = {}
        for project in projects:
            accepted = project.clicks_accepted()
            got, deadline = -1, time.monotonic() + 120
            while time.monotonic() < deadline:
                now = project.clicks_persisted()
                if now == got and now >= accepted:
                    break
                got = now
                time.sleep(3)
            persisted[project.label] = {"accepted": accepted, "persisted": got}
        report(results, concs, [p.label for p in projects], with_sixpack, persisted)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "track": persisted, "sixpack": with_sixpack}, indent=1))
        print(f"raw: {args.json}")
    finally:
        servers.stop()
        for project in projects:
            try:
                project.drop()
            except psycopg.Error as exc:
                print(f"could not drop {project.db}: {exc}", file=sys.stderr)
    return 0


def report(results: dict, concs: list[int], labels: list[str], with_sixpack: bool, persisted: dict) -> None:
    def median(label: str, conc: int, key: str = "rps") -> float | None:
        runs = results.get(label, {}).get(conc)
        return statistics.median(r[key] for r in runs) if runs else None

    def ratio(num: str, den: str, conc: int) -> str:
        a, b = results.get(num, {}).get(conc), results.get(den, {}).get(conc)
        if not a or not b:
            return "–"
        per = [x["rps"] / y["rps"] for x, y in zip(a, b)]
        return f"{statistics.median(per):.2f} [{min(per):.2f}–{max(per):.2f}]"

    def cell(label: str, conc: int) -> str:
        rps = median(label, conc)
        return "–" if rps is None else f"{rps:,.0f} req/s, p95 {median(label, conc, 'p95_ms'):.1f} ms"

    print("\nmedians over rounds; ratios are medians of per-round ratios [min–max]")
    for conc in concs:
        print(f"\n| path, c={conc} | {' | '.join(labels)} | Sixpack | ceiling | "
              + " | ".join(f"{label} / Sixpack | {label} / ceiling" for label in labels) + " |")
        print("|---" * (3 + 3 * len(labels)) + "|")
        for case, six in (("returning", "sixpack-returning"), ("fresh", "sixpack-fresh"), ("track", "sixpack-convert")):
            row = [f"assign, {'returning' if case == 'returning' else 'first-time'} user" if case != "track" else "track"]
            row += [cell(f"{label}-{case}", conc) for label in labels]
            row += [cell(six, conc) if with_sixpack else "skipped", cell("ceiling", conc) if case == "returning" else ""]
            for label in labels:
                row += [ratio(f"{label}-{case}", six, conc) if with_sixpack else "–", ratio(f"{label}-{case}", "ceiling", conc)]
            print("| " + " | ".join(row) + " |")
        for label in labels:
            if results.get(f"{label}-bandit-fresh", {}).get(conc):
                print(f"| assign, first-time user, bandit ({label}) | {cell(f'{label}-bandit-fresh', conc)} |")
    print("\nserver CPU per request (user + system of the server's worker processes; Redis and PostgreSQL not included), "
          "median over rounds, µs")
    for label in results:
        for conc in concs:
            runs = [r["cpu_us_per_request"] for r in results[label].get(conc, []) if r.get("cpu_us_per_request")]
            if runs:
                print(f"  {label:26s} c={conc:<3d} {statistics.median(runs):7.0f}")
    for label, counts in persisted.items():
        verdict = "exactly once" if counts["persisted"] == counts["accepted"] else "MISMATCH"
        print(f"\n{label} track: {counts['accepted']} events accepted (experiment_metrics_accepted_total), "
              f"{counts['persisted']} rows persisted: {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())

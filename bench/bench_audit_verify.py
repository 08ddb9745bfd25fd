"""Audit chain verification: the incremental check from the last signed checkpoint against the full walk.

A scratch database (recreated, with the owner and application roles of ``scripts/db_roles.py``)
gets ``--entries`` audit entries written through ``services.experiments.audit.record`` (the
code every mutation uses, ``--batch`` per transaction). Then, as the application role:

- ``GET /api/audit/verify`` before any checkpoint (the incremental check has to start at the genesis);
- the full walk (what ``?full=1`` runs in the worker);
- one checkpoint signed (``audit.write_checkpoint``, beat's task);
- ``GET /api/audit/verify`` with the checkpoint at the head, and after ``--tail`` more entries.

    .venv/bin/python bench/bench_audit_verify.py [--entries 20000] [--tail 300] [--repeat 5] [--keep]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MOLAM_ENV_FILE", "")

import psycopg
from psycopg import sql

from core import db
from core.config import PROJECT_ROOT, Settings
from scripts.db_roles import provision, url_for_role

NAME = "molam_experiments_bench_audit"


def recreate(admin_url: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (NAME,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(NAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(NAME)))
    return admin_url.rsplit("/", 1)[0] + "/" + NAME


def write_entries(count: int, batch: int, offset: int = 0) -> None:
    from services.experiments import audit

    actor = audit.Actor(sub="bench", roles=("ops_admin",), request_id="bench", client_ip="127.0.0.1")
    for start in range(0, count, batch):
        with db.session_scope() as session:
            for n in range(start, min(count, start + batch)):
                audit.record(
                    session, actor=actor, action="update", experiment_id=None,
                    before={"description": f"before {offset + n}", "version": offset + n},
                    after={"description": f"after {offset + n}", "version": offset + n + 1},
                )


def timed(function, repeat: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-database-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9"))
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--tail", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    from alembic import command
    from alembic.config import Config

    admin_url = recreate(args.admin_database_url)
    provision(admin_url, owner=f"{NAME}_owner", app=f"{NAME}_app")
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = url_for_role(admin_url, f"{NAME}_owner")
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")

    from api import create_app
    from api.auth import mint_dev_token
    from services.experiments import audit, audit_checks

    settings = Settings(
        app_env="development", database_url=url_for_role(admin_url, f"{NAME}_app"), redis_url=args.redis_url,
        audit_hmac_key="bench-" + "k" * 40, audit_hmac_key_id="bench", dev_key_dir=Path(tempfile.mkdtemp()),
    )
    app = create_app(settings)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {mint_dev_token(settings, 'ops_admin')}"}

    def verify_endpoint() -> dict:
        response = client.get("/api/audit/verify", headers=headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def full_walk():
        with db.session_scope() as session:
            return audit_checks.verify_chain(session, audit.current_keys(), full=True)

    def checkpoint():
        with db.session_scope() as session:
            return audit_checks.write_checkpoint(session, audit.current_keys())

    started = time.perf_counter()
    write_entries(args.entries, args.batch)
    print(f"wrote {args.entries} entries in {time.perf_counter() - started:.1f} s")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE experiment_audit_logs")

    rows = []
    seconds, result = timed(verify_endpoint, args.repeat)
    assert result["ok"] and result["from_checkpoint"] is None
    rows.append(("GET /api/audit/verify, no checkpoint yet", result["entries"], result["verified_entries"], seconds))
    seconds, result = timed(full_walk, args.repeat)
    assert result.ok
    rows.append(("full walk (?full=1, in the worker)", result.entries, result.verified_entries, seconds))
    seconds, outcome = timed(checkpoint, 1)
    assert outcome.written
    rows.append(("audit.write_checkpoint (verifies, then signs)", args.entries, args.entries, seconds))
    seconds, result = timed(verify_endpoint, args.repeat)
    assert result["ok"] and result["from_checkpoint"] is not None
    rows.append(("GET /api/audit/verify, checkpoint at the head", result["entries"], result["verified_entries"], seconds))
    write_entries(args.tail, args.batch, offset=args.entries)
    seconds, result = timed(verify_endpoint, args.repeat)
    assert result["ok"] and result["verified_entries"] == args.tail
    rows.append((f"GET /api/audit/verify, {args.tail} entries after the checkpoint", result["entries"], result["verified_entries"], seconds))

    print(f"\n| what | entries | re-hashed | median of {args.repeat} |\n|---|---|---|---|")
    for what, entries, verified, seconds in rows:
        print(f"| {what} | {entries:,} | {verified:,} | {seconds * 1000:.1f} ms |")

    db.get_engine().dispose()
    if not args.keep:
        with psycopg.connect(args.admin_database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (NAME,))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(NAME)))
            for role in (f"{NAME}_app", f"{NAME}_owner"):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

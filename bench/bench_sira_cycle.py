"""One SIRA cycle (``sira.recompute_posteriors`` + ``sira.fail_fast_scan``) over many
running experiments, timed on real PostgreSQL and Redis.

Builds a scratch database (``molam_experiments_bench_sira`` by default; dropped and
recreated) with N running bandit experiments × K arms, every arm with assigned users
in ``experiment_assignments`` and conversion / refund / fraud-alert rows in
``experiment_variant_rollups`` (rates drawn around 10%, so a few arms are flagged by
fail-fast and guardrails in the first scan), then runs the two jobs as the worker
does (same code, same locks) and reports:

* cold cycle: the first one, which inserts every state row, writes the first
  history point, records the findings (audit entries, pauses) and caches D7;
* warm cycles: later ones on unchanged data (the steady state every 30/60 s);
* changing cycles: later ones after every arm's counts moved (a busy platform);
* one results call (the API's service function) on one experiment, for scale.

Target: one cycle over 1,000 experiments × 5 arms in ≤ 2 s.

Run:  .venv/bin/python bench/bench_sira_cycle.py [--experiments 1000] [--arms 5]
      [--users-per-arm 1000] [--cycles 5] [--keep]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import db
from core.config import libpq_url, normalise_database_url
from core.redis import get_redis
from services.analysis import jobs as sira_jobs
from services.analysis import results as sira_results
from services.analysis import scan as sira_scan
from services.experiments import audit


def plain(url: str) -> str:
    return libpq_url(url)


def recreate_database(url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(plain(url))["dbname"]
    if "bench" not in name:
        raise SystemExit(f"refusing to recreate {name!r}: the bench database name must contain 'bench'")
    with psycopg.connect(plain(url), dbname="postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["url"] = normalise_database_url(url)
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def load(url: str, experiments: int, arms: int, users_per_arm: int) -> None:
    """Experiments, variants, assignments and rollups, generated in SQL."""
    with psycopg.connect(plain(url)) as conn:
        conn.execute(
            """
            INSERT INTO experiments (id, name, status, mode, created_by, started_at, fail_fast, guardrails, bandit)
            SELECT gen_random_uuid(), 'bench ' || g, 'running', 'bandit', 'bench', now() - interval '1 day',
                   '{"rule": "sequential", "min_samples": 100, "threshold": 0.95, "action": "recommend"}',
                   '{"event_types": ["fraud_alert", "refund"], "action": "pause_variant"}',
                   '{"min_samples": 100, "floor": 0.01}'
            FROM generate_series(1, %s) g
            """,
            (experiments,),
        )
        conn.execute(
            """
            INSERT INTO experiment_variants (experiment_id, name, traffic_share, is_control, position, config)
            SELECT e.id, 'arm ' || p, round(100.0 / %s, 2), p = 0, p, jsonb_build_object('arm', p)
            FROM experiments e, generate_series(0, %s - 1) p
            """,
            (arms, arms),
        )
        conn.commit()
        started = time.perf_counter()
        conn.execute(
            """
            INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id, assigned_at)
            SELECT v.experiment_id, v.id, v.position || '-' || g, now() - interval '1 hour'
            FROM experiment_variants v, generate_series(1, %s) g
            """,
            (users_per_arm,),
        )
        conn.commit()
        print(f"  {experiments * arms * users_per_arm:,} assignments loaded in {time.perf_counter() - started:.1f} s")
        # Conversion around 10% (a few arms clearly worse), refunds around 2%, fraud alerts 0.5%.
        conn.execute(
            """
            INSERT INTO experiment_variant_rollups
                (experiment_id, variant_id, event_type, events, users, value_count, value_sum, value_sum_squares,
                 user_value_sum_squares)
            SELECT v.experiment_id, v.id, t.event_type, c.users * 13 / 10, c.users,
                   CASE WHEN t.event_type = 'conversion' THEN c.users ELSE 0 END,
                   CASE WHEN t.event_type = 'conversion' THEN c.users * 40.0 ELSE 0 END,
                   CASE WHEN t.event_type = 'conversion' THEN c.users * 2000.0 ELSE 0 END,
                   CASE WHEN t.event_type = 'conversion' THEN c.users * 2400.0 ELSE 0 END
            FROM experiment_variants v
            CROSS JOIN (VALUES ('conversion', 0.10, 0.015), ('refund', 0.02, 0.006), ('fraud_alert', 0.005, 0.002))
                 AS t(event_type, rate, spread)
            CROSS JOIN LATERAL (
                -- v.id in the expression makes the subquery (and random()) per row
                SELECT least(%s, greatest(0, round(%s * (t.rate + t.spread * (random() - 0.5) * 2
                                                          + 0 * length(v.id::text)))))::bigint AS users
            ) c
            """,
            (users_per_arm, users_per_arm),
        )
        # One experiment in 20 has a clearly losing last arm (3%): fail-fast flags it.
        conn.execute(
            """
            UPDATE experiment_variant_rollups r SET users = round(%s * 0.03), events = round(%s * 0.03 * 1.3)
            FROM experiment_variants v
            WHERE r.variant_id = v.id AND r.event_type = 'conversion' AND v.position = %s - 1
              AND v.experiment_id IN (SELECT id FROM experiments ORDER BY id LIMIT %s / 20)
            """,
            (users_per_arm, users_per_arm, arms, experiments),
        )
        conn.commit()
    with psycopg.connect(plain(url), autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        print(f"  VACUUM ANALYZE in {time.perf_counter() - started:.1f} s")


def bump_counts(url: str) -> None:
    """Every arm gains users and conversions, as between two cycles on a busy platform."""
    with psycopg.connect(plain(url)) as conn:
        conn.execute("UPDATE experiment_variant_rollups SET users = users + 1, events = events + 1 WHERE event_type = 'conversion'")
        conn.execute(
            """
            INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id)
            SELECT experiment_id, id, 'late-' || gen_random_uuid() FROM experiment_variants
            """
        )


def timed(label: str, work):
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def cycle(client):
    recompute_s, recompute = timed("recompute", lambda: sira_jobs.recompute_posteriors(client))
    scan_s, scan = timed("scan", lambda: sira_scan.fail_fast_scan(client))
    return recompute_s, scan_s, recompute, scan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/molam_experiments_bench_sira")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--arms", type=int, default=5)
    parser.add_argument("--users-per-arm", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (about 1 GB) afterwards")
    args = parser.parse_args()
    logging.getLogger("sira.notifications").setLevel(logging.ERROR)  # one line per finding otherwise

    print(f"Building {args.experiments} running experiments × {args.arms} arms × {args.users_per_arm} users per arm")
    recreate_database(args.database_url)
    load(args.database_url, args.experiments, args.arms, args.users_per_arm)
    db.init_engine(normalise_database_url(args.database_url))
    # Findings are audited: the chain needs its key (a fixed one for the benchmark).
    audit.configure_keys(audit.AuditKeys("bench", {"bench": b"bench-audit-key-" + b"0" * 32}))
    client = get_redis(args.redis_url)

    rows = []
    r, s, recompute, scan = cycle(client)
    rows.append(("cold", r, s))
    print(f"cold cycle: recompute {r:.3f} s ({recompute.arms} arms, {recompute.published} published, "
          f"{recompute.d7_refreshed} D7 cached) + scan {s:.3f} s ({scan.recommendations} findings recorded, "
          f"{scan.actions_applied} actions) = {r + s:.3f} s")
    warm = [cycle(client) for _ in range(args.cycles)]
    changing = []
    for _ in range(args.cycles):
        bump_counts(args.database_url)
        changing.append(cycle(client))
    for label, runs in (("warm", warm), ("changing", changing)):
        totals = [r + s for r, s, *_ in runs]
        print(f"{label} cycles ({len(runs)}): recompute median {statistics.median(r for r, *_ in runs):.3f} s, "
              f"scan median {statistics.median(s for _, s, *_ in runs):.3f} s, "
              f"cycle median {statistics.median(totals):.3f} s, max {max(totals):.3f} s "
              f"(history rows in last: {runs[-1][2].history_rows})")

    with db.session_scope() as session:
        experiment_id = session.execute(text("SELECT id FROM experiments LIMIT 1")).scalar_one()
    samples = []
    for _ in range(21):
        with db.session_scope() as session:
            elapsed, _ = timed("results", lambda: sira_results.experiment_results(session, client, uuid.UUID(str(experiment_id))))
        samples.append(elapsed)
    print(f"results of one experiment ({args.arms} arms × 6 event types): median {statistics.median(samples) * 1000:.1f} ms")
    client.delete(*[k for k in client.scan_iter("sira:*")] or ["sira:none"])
    if not args.keep:
        db.get_engine().dispose()
        with psycopg.connect(plain(args.database_url), dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(psycopg.conninfo.conninfo_to_dict(plain(args.database_url))["dbname"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

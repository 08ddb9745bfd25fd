"""``DATABASE_REPLICA_URL``: results, insights, exports and reports read from the replica;
writes never go there. A second test database stands in for the replica: it has the
schema but only the rows the test copies into it, so where each read came from shows."""
from __future__ import annotations

import json

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from core import db
from core.config import PROJECT_ROOT, libpq_url
from tests.support.database import create_database


@pytest.fixture(scope="module")
def replica_url(migrated_database: str) -> str:
    primary = psycopg.conninfo.conninfo_to_dict(libpq_url(migrated_database))["dbname"]
    name = primary.removesuffix("_test") + "_replica_test"
    url = migrated_database.rsplit("/", 1)[0] + "/" + name
    create_database(url)
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")
    yield url
    with psycopg.connect(libpq_url(migrated_database), dbname="postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
        )
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def replica_client(settings, replica_url, migrated_database):
    from api import create_app

    with psycopg.connect(libpq_url(replica_url), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE experiments, experiment_variants, experiment_assignments, experiment_metrics, "
                     "experiment_variant_rollups, experiment_user_rollups, sira_reports, experiment_audit_logs CASCADE")
    app = create_app(settings.with_overrides(database_replica_url=replica_url))
    app.config["TESTING"] = True
    try:
        yield app.test_client()
    finally:
        db.init_read_engine(None)
        db.init_engine(settings.database_url)


def copy_rows(primary_url: str, replica_url: str, table: str, where: str, params: tuple) -> int:
    """Replicate rows by hand: what streaming replication would have done by now."""
    with psycopg.connect(libpq_url(primary_url)) as source:
        rows = [r[0] for r in source.execute(f"SELECT row_to_json(t) FROM {table} t WHERE {where}", params)]
    with psycopg.connect(libpq_url(replica_url), autocommit=True) as target:
        target.execute("SET session_replication_role = replica")
        for row in rows:
            target.execute(f"INSERT INTO {table} SELECT * FROM json_populate_record(NULL::{table}, %s)", (json.dumps(row),))
    return len(rows)


def count(url: str, sql: str, params: tuple = ()) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_reads_come_from_the_replica_and_writes_stay_on_the_primary(replica_client, replica_url, settings, auth):
    primary = settings.database_url
    client = replica_client
    admin = auth("ops_admin")
    from tests.support.api import experiment_body

    # Writes: create and start go to the primary only.
    created = client.post("/api/experiments", json=experiment_body(), headers=admin)
    assert created.status_code == 201
    experiment_id = created.get_json()["id"]
    assert client.post(f"/api/experiments/{experiment_id}/start", headers=admin).status_code == 200
    assigned = client.post(f"/api/experiments/{experiment_id}/assign", json={"molam_id": "u1", "country": "SN", "lang": "fr"},
                           headers=auth("pay_module"))
    assert assigned.status_code == 200
    assert count(primary, "SELECT count(*) FROM experiments WHERE id = %s", (experiment_id,)) == 1
    assert count(primary, "SELECT count(*) FROM experiment_assignments WHERE experiment_id = %s", (experiment_id,)) == 1
    assert count(replica_url, "SELECT count(*) FROM experiments") == 0
    assert count(replica_url, "SELECT count(*) FROM experiment_assignments") == 0
    assert count(replica_url, "SELECT count(*) FROM experiment_audit_logs") == 0

    # Reads: the replica has not caught up yet, so results, insights and exports do not see it.
    assert client.get(f"/api/experiments/{experiment_id}", headers=admin).status_code == 200  # definitions: primary
    assert client.get(f"/api/experiments/{experiment_id}/results", headers=admin).status_code == 404
    assert client.get(f"/api/experiments/{experiment_id}/insights", headers=admin).status_code == 404
    assert client.get(f"/api/experiments/{experiment_id}/export?kind=assignments", headers=admin).status_code == 404

    # Replicated (by hand), with a report generated on the primary.
    from services.analysis.reports import daily_reports

    assert daily_reports(None).created == 1
    assert client.get(f"/api/reports?experiment_id={experiment_id}", headers=admin).get_json() == []
    for table, where in (("experiments", "id = %s"), ("experiment_variants", "experiment_id = %s"),
                         ("experiment_assignments", "experiment_id = %s"), ("sira_reports", "experiment_id = %s")):
        assert copy_rows(primary, replica_url, table, where, (experiment_id,)) >= 1
    results = client.get(f"/api/experiments/{experiment_id}/results", headers=admin)
    assert results.status_code == 200
    assert sum(v["assigned_users"] for v in results.get_json()["variants"]) == 1
    assert client.get(f"/api/experiments/{experiment_id}/insights", headers=admin).status_code == 200
    exported = client.get(f"/api/experiments/{experiment_id}/export?kind=assignments", headers=admin)
    assert exported.status_code == 200 and "u1" in exported.get_data(as_text=True)
    reports = client.get(f"/api/reports?experiment_id={experiment_id}", headers=admin).get_json()
    assert len(reports) == 1
    assert client.get(f"/api/reports/{reports[0]['id']}", headers=admin).status_code == 200

    # A user only the replica knows shows up in an export: the read really went there.
    with psycopg.connect(libpq_url(replica_url), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO experiment_assignments (experiment_id, variant_id, molam_id) "
            "SELECT experiment_id, variant_id, 'replica-only-user' FROM experiment_assignments WHERE molam_id = 'u1'"
        )
    assert "replica-only-user" in client.get(f"/api/experiments/{experiment_id}/export?kind=assignments", headers=admin).get_data(as_text=True)


def test_a_write_on_a_read_session_is_refused(replica_client):
    from sqlalchemy import text
    from sqlalchemy.exc import InternalError, OperationalError, ProgrammingError

    session = db.new_read_session()
    try:
        with pytest.raises((InternalError, OperationalError, ProgrammingError), match="read-only"):
            session.execute(text("CREATE TABLE should_not_exist (id int)"))
    finally:
        session.rollback()
        session.close()


def test_without_a_replica_reads_use_the_primary(client, create_experiment, auth):
    experiment = create_experiment(start=True)
    assert client.get(f"/api/experiments/{experiment['id']}/results", headers=auth("ops_admin")).status_code == 200

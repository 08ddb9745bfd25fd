"""deploy/postgres/10-app-role.sh, run by psql as the compose stack's first start does, against a
fresh database of the test server: the application role can read and write rows of the
tables the migrations create afterwards, and nothing more."""
from __future__ import annotations

import os
import shutil
import subprocess

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql

from core.config import PROJECT_ROOT, libpq_url
from tests.support.database import create_database

SCRIPT = PROJECT_ROOT / "deploy/postgres/10-app-role.sh"


@pytest.fixture
def role_database(migrated_database):
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    primary = psycopg.conninfo.conninfo_to_dict(libpq_url(migrated_database))
    name = primary["dbname"].removesuffix("_test") + "_roles_test"
    role = f"{name}_app"
    url = migrated_database.rsplit("/", 1)[0] + "/" + name
    create_database(url)
    try:
        yield url, name, role, primary
    finally:
        with psycopg.connect(libpq_url(migrated_database), dbname="postgres", autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_the_app_role_gets_rows_not_schema(role_database):
    url, name, role, primary = role_database
    env = {
        **os.environ,
        "POSTGRES_USER": primary.get("user", "postgres"),
        "POSTGRES_DB": name,
        "APP_DB_USER": role,
        "APP_DB_PASSWORD": "app-password-for-the-test",
        "PGHOST": primary.get("host", "127.0.0.1"),
        "PGPORT": str(primary.get("port", 5432)),
    }
    subprocess.run(["sh", str(SCRIPT)], env=env, check=True, capture_output=True)
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")  # as the owner, after the role exists: default privileges apply

    app_url = psycopg.conninfo.make_conninfo(libpq_url(url), user=role, password="app-password-for-the-test")
    with psycopg.connect(app_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0
        conn.execute("INSERT INTO experiment_metric_dead_letters (event_id, payload, error) VALUES ('e1', '{}', 'check')")
        conn.execute("UPDATE experiment_metric_dead_letters SET error = 'checked' WHERE event_id = 'e1'")
        assert conn.execute("SELECT error FROM experiment_metric_dead_letters").fetchone()[0] == "checked"
        conn.execute("DELETE FROM experiment_metric_dead_letters")
        conn.execute("CREATE TEMP TABLE staging_check (id int)")  # the drain's temporary staging table
        for statement in (
            "CREATE TABLE intruder (id int)",
            "TRUNCATE experiments",
            "ALTER TABLE experiment_audit_logs DISABLE TRIGGER ALL",
            "DROP TABLE experiment_metrics",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        granted = {
            row[0] for row in conn.execute(
                "SELECT privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee = %s AND table_name = 'experiment_metrics'", (role,)
            )
        }
        assert granted == {"SELECT", "INSERT", "UPDATE", "DELETE"}
        # The audit tables: read and append only, whatever the default privileges gave.
        for table in ("experiment_audit_logs", "experiment_audit_checkpoints", "experiment_audit_legacy_boundary"):
            audit_grants = {
                row[0] for row in conn.execute(
                    "SELECT privilege_type FROM information_schema.role_table_grants "
                    "WHERE grantee = %s AND table_name = %s", (role, table)
                )
            }
            assert audit_grants == {"SELECT", "INSERT"}, table
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(f"DELETE FROM {table}")
    with psycopg.connect(libpq_url(url)) as conn:
        superuser, = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        assert superuser is False

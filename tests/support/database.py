"""Test databases: created (and recreated) only under names the tests own, with their two roles."""
from __future__ import annotations

import psycopg
from psycopg import sql

from core.config import libpq_url


def create_database(url: str) -> None:
    """Create the test database named in ``url`` (ours alone: drop and recreate it)."""
    plain = libpq_url(url)
    name = psycopg.conninfo.conninfo_to_dict(plain)["dbname"]
    if not name.endswith("_test") and "_test_" not in name:
        raise RuntimeError(f"refusing to recreate {name!r}: a test database name must contain '_test'")
    with psycopg.connect(plain, dbname="postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def database_name(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(libpq_url(url))["dbname"]


def roles_for(url: str) -> tuple[str, str]:
    """(owner, application role) of a test database, named after it so that test databases
    running side by side on one server never share a role."""
    name = database_name(url)
    return f"{name}_owner", f"{name}_app"

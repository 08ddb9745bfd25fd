"""The two PostgreSQL roles of a database, created and granted idempotently.

- the **owner** owns the database, its schema and every table, and runs the migrations;
- the **application role** (API, worker, beat) gets ``SELECT, INSERT, UPDATE, DELETE`` on the
  tables, except the append-only audit tables (``models.APPEND_ONLY_TABLES``), where it gets
  only ``SELECT, INSERT``. It owns nothing, so it can neither change the schema, truncate,
  nor disable the audit triggers. Tables added by later migrations are granted to it through
  the owner's default privileges (and migration 0015 takes the rewrites back on the audit tables).

``make run`` (embedded PostgreSQL) and the test fixtures call :func:`provision` as a superuser;
the compose stack does the same with ``deploy/postgres/10-app-role.sh``.
"""
from __future__ import annotations

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from core.config import libpq_url
from models import APPEND_ONLY_TABLES


def url_for_role(url: str, role: str, password: str | None = None) -> str:
    """``url`` with its user replaced by ``role`` (SQLAlchemy spelling kept)."""
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def _create_role(conn: psycopg.Connection, role: str, password: str | None) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if exists is None:
        conn.execute(sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
        ).format(sql.Identifier(role)))
    if password is not None:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))


def provision(admin_url: str, *, owner: str, app: str, app_password: str | None = None) -> None:
    """Create ``owner`` and ``app`` if missing and (re)apply their rights on ``admin_url``'s database.

    ``admin_url`` connects as a superuser. Safe to run any number of times, before or after
    the migrations: objects created earlier by the superuser are handed to the owner.
    """
    plain = libpq_url(admin_url)
    database = psycopg.conninfo.conninfo_to_dict(plain)["dbname"]
    owner_id, app_id, db_id = sql.Identifier(owner), sql.Identifier(app), sql.Identifier(database)
    with psycopg.connect(plain, dbname="postgres", autocommit=True) as conn:
        _create_role(conn, owner, None)
        _create_role(conn, app, app_password)
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db_id, owner_id))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db_id))
        conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db_id, app_id))
    with psycopg.connect(plain, autocommit=True) as conn, conn.transaction():
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(owner_id))
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(app_id))
        # Relations and functions a superuser created (an older development database).
        owned_elsewhere = conn.execute(
            """
            SELECT c.relname, c.relkind = 'v' FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
              AND c.relowner <> %s::regrole
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
            """,
            (owner,),
        ).fetchall()
        for name, is_view in owned_elsewhere:
            kind = "VIEW" if is_view else "TABLE"
            conn.execute(sql.SQL(f"ALTER {kind} {{}} OWNER TO {{}}").format(sql.Identifier(name), owner_id))
        functions = conn.execute(
            """
            SELECT p.oid::regprocedure::text FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> %s::regrole
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
            """,
            (owner,),
        ).fetchall()
        for (signature,) in functions:
            conn.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature), owner_id))
        for statement in (
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO {app}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}",
        ):
            conn.execute(sql.SQL(statement).format(owner=owner_id, app=app_id))
        existing = {row[0] for row in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname = ANY(%s)",
            (list(APPEND_ONLY_TABLES),),
        )}
        for table in sorted(existing):
            conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}, PUBLIC").format(sql.Identifier(table), app_id))

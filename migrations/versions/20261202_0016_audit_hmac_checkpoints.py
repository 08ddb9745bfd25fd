"""audit chain: HMAC key id, no fork (unique prev_hash), legacy boundary, signed checkpoints,
verification jobs; the application role keeps only SELECT and INSERT on the audit tables

Revision ID: 20261202_0016
Revises: 20261202_0015_allowed_services
Create Date: 2026-12-02 03:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "20261202_0016"
down_revision = "20261202_0015_allowed_services"
branch_labels = None
depends_on = None

# A copy, not an import: a revision must not change when the models do.
APPEND_ONLY_TABLES = ("experiment_audit_logs", "experiment_audit_checkpoints", "experiment_audit_legacy_boundary")
NEW_APPEND_ONLY_TABLES = APPEND_ONLY_TABLES[1:]

APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""

# Whatever the deployment granted (default privileges give new tables UPDATE and DELETE),
# nobody but the owner keeps UPDATE, DELETE or TRUNCATE on the audit tables.
REVOKE_REWRITES = """
DO $$
DECLARE grant_row record;
BEGIN
    FOR grant_row IN
        SELECT DISTINCT c.relname, acl.grantee
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) acl
        WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relname = ANY (ARRAY[{tables}])
          AND acl.grantee <> c.relowner
          AND acl.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
    LOOP
        IF grant_row.grantee = 0 THEN
            EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %I FROM PUBLIC', grant_row.relname);
        ELSE
            EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %I FROM %s', grant_row.relname, grant_row.grantee::regrole);
        END IF;
    END LOOP;
END
$$
""".format(tables=", ".join(f"'{name}'" for name in APPEND_ONLY_TABLES))


def upgrade() -> None:
    op.add_column("experiment_audit_logs", sa.Column("key_id", sa.String(length=32), nullable=True))
    # Fails if an existing chain already forked: that history needs a human, not a migration.
    op.create_unique_constraint(op.f("uq_experiment_audit_logs_prev_hash"), "experiment_audit_logs", ["prev_hash"])
    op.create_table(
        "experiment_audit_legacy_boundary",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_legacy_id", sa.BigInteger(), nullable=False),
        sa.Column("last_legacy_hash", sa.String(length=64), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_audit_legacy_boundary")),
    )
    # The switch-over point: every entry written so far is a plain SHA-256 entry.
    op.execute(
        "INSERT INTO experiment_audit_legacy_boundary (id, last_legacy_id, last_legacy_hash, entries) "
        "SELECT 1, id, hash, (SELECT count(*) FROM experiment_audit_logs) "
        "FROM experiment_audit_logs ORDER BY id DESC LIMIT 1"
    )
    op.create_table(
        "experiment_audit_checkpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_audit_checkpoints")),
        sa.UniqueConstraint("entry_id", name="uq_experiment_audit_checkpoints_entry_id"),
    )
    op.create_table(
        "experiment_audit_verify_jobs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_audit_verify_jobs")),
    )
    op.execute(APPEND_ONLY_FUNCTION)
    for table in NEW_APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE "
            f"ON {table} FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
        )
    op.execute(REVOKE_REWRITES)


def downgrade() -> None:
    for table in NEW_APPEND_ONLY_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update_delete ON {table}")
    op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    op.drop_table("experiment_audit_verify_jobs")
    op.drop_table("experiment_audit_checkpoints")
    op.drop_table("experiment_audit_legacy_boundary")
    op.drop_constraint(op.f("uq_experiment_audit_logs_prev_hash"), "experiment_audit_logs", type_="unique")
    op.drop_column("experiment_audit_logs", "key_id")

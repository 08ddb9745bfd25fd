"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 05:58:09.175504
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

AUDIT_IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION experiment_audit_logs_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'experiment_audit_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table('experiment_audit_logs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('actor_roles', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('before', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('after', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('client_ip', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_audit_logs')),
    sa.UniqueConstraint('hash', name=op.f('uq_experiment_audit_logs_hash'))
    )
    op.create_index('ix_experiment_audit_logs_experiment_id_id', 'experiment_audit_logs', ['experiment_id', 'id'], unique=False)
    op.create_table('experiment_metric_dead_letters',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=True),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_metric_dead_letters'))
    )
    op.create_index(op.f('ix_experiment_metric_dead_letters_event_id'), 'experiment_metric_dead_letters', ['event_id'], unique=False)
    op.create_table('experiments',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='draft', nullable=False),
    sa.Column('mode', sa.String(length=16), server_default='ab', nullable=False),
    sa.Column('coverage', sa.Numeric(precision=5, scale=2), server_default='100', nullable=False),
    sa.Column('primary_metric', sa.String(length=32), server_default='conversion', nullable=False),
    sa.Column('targeting', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('fail_fast', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('guardrails', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('bandit', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.CheckConstraint("mode IN ('ab', 'bandit')", name=op.f('ck_experiments_mode')),
    sa.CheckConstraint("primary_metric IN ('conversion', 'refund', 'churn', 'fraud_alert', 'click', 'view')", name=op.f('ck_experiments_primary_metric')),
    sa.CheckConstraint("status IN ('draft', 'running', 'stopped', 'archived')", name=op.f('ck_experiments_status')),
    sa.CheckConstraint('coverage > 0 AND coverage <= 100', name=op.f('ck_experiments_coverage_range')),
    sa.CheckConstraint('version >= 1', name=op.f('ck_experiments_version_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiments'))
    )
    op.create_index('ix_experiments_status_created_at', 'experiments', ['status', 'created_at'], unique=False)
    op.create_table('experiment_variants',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('traffic_share', sa.Numeric(precision=5, scale=2), nullable=False),
    sa.Column('is_control', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('position', sa.Integer(), server_default='0', nullable=False),
    sa.Column('paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('paused_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("jsonb_typeof(config) = 'object'", name=op.f('ck_experiment_variants_config_object')),
    sa.CheckConstraint('traffic_share >= 0 AND traffic_share <= 100', name=op.f('ck_experiment_variants_traffic_share_range')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_variants_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_variants')),
    sa.UniqueConstraint('experiment_id', 'name', name='uq_experiment_variants_experiment_id_name')
    )
    op.create_index(op.f('ix_experiment_variants_experiment_id'), 'experiment_variants', ['experiment_id'], unique=False)
    op.create_index('uq_experiment_variants_one_control', 'experiment_variants', ['experiment_id'], unique=True, postgresql_where=sa.text('is_control'))
    op.create_table('sira_reports',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('report_date', sa.Date(), nullable=False),
    sa.Column('content', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('markdown', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_sira_reports_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sira_reports')),
    sa.UniqueConstraint('experiment_id', 'report_date', name='uq_sira_reports_experiment_id_report_date')
    )
    op.create_index('ix_sira_reports_experiment_id_created_at', 'sira_reports', ['experiment_id', 'created_at'], unique=False)
    op.create_table('experiment_assignments',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('variant_id', sa.UUID(), nullable=False),
    sa.Column('molam_id', sa.String(length=200), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=True),
    sa.Column('lang', sa.String(length=16), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('region', sa.String(length=64), nullable=True),
    sa.Column('device', sa.String(length=32), nullable=True),
    sa.Column('assigned_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_assignments_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variant_id'], ['experiment_variants.id'], name=op.f('fk_experiment_assignments_variant_id_experiment_variants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_assignments')),
    sa.UniqueConstraint('experiment_id', 'molam_id', name='uq_experiment_assignments_experiment_id_molam_id')
    )
    op.create_index('ix_experiment_assignments_variant_id', 'experiment_assignments', ['variant_id'], unique=False)
    op.create_table('experiment_bandit_history',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('variant_id', sa.UUID(), nullable=False),
    sa.Column('users', sa.BigInteger(), nullable=False),
    sa.Column('successes', sa.BigInteger(), nullable=False),
    sa.Column('alpha', sa.Double(), nullable=False),
    sa.Column('beta', sa.Double(), nullable=False),
    sa.Column('prob_best', sa.Double(), nullable=False),
    sa.Column('weight', sa.Double(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_bandit_history_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variant_id'], ['experiment_variants.id'], name=op.f('fk_experiment_bandit_history_variant_id_experiment_variants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_bandit_history'))
    )
    op.create_index('ix_experiment_bandit_history_experiment_id_computed_at', 'experiment_bandit_history', ['experiment_id', 'computed_at'], unique=False)
    op.create_table('experiment_bandit_state',
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('variant_id', sa.UUID(), nullable=False),
    sa.Column('users', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('successes', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('alpha', sa.Double(), nullable=False),
    sa.Column('beta', sa.Double(), nullable=False),
    sa.Column('prob_best', sa.Double(), nullable=False),
    sa.Column('weight', sa.Double(), nullable=False),
    sa.Column('burn_in', sa.Boolean(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_bandit_state_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variant_id'], ['experiment_variants.id'], name=op.f('fk_experiment_bandit_state_variant_id_experiment_variants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'variant_id', name=op.f('pk_experiment_bandit_state'))
    )
    op.create_table('experiment_metrics',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('variant_id', sa.UUID(), nullable=False),
    sa.Column('molam_id', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("event_type IN ('conversion', 'refund', 'churn', 'fraud_alert', 'click', 'view')", name=op.f('ck_experiment_metrics_event_type')),
    sa.CheckConstraint("value IS NULL OR (value = value AND abs(value) < 'Infinity')", name=op.f('ck_experiment_metrics_value_finite')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_metrics_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variant_id'], ['experiment_variants.id'], name=op.f('fk_experiment_metrics_variant_id_experiment_variants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_metrics')),
    sa.UniqueConstraint('event_id', name=op.f('uq_experiment_metrics_event_id'))
    )
    op.create_index('ix_experiment_metrics_experiment_id_variant_id', 'experiment_metrics', ['experiment_id', 'variant_id'], unique=False)
    op.create_table('experiment_user_rollups',
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('molam_id', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('variant_id', sa.UUID(), nullable=False),
    sa.Column('events', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('value_sum', sa.Double(), server_default='0', nullable=False),
    sa.Column('first_event_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_event_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("event_type IN ('conversion', 'refund', 'churn', 'fraud_alert', 'click', 'view')", name=op.f('ck_experiment_user_rollups_event_type')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_user_rollups_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variant_id'], ['experiment_variants.id'], name=op.f('fk_experiment_user_rollups_variant_id_experiment_variants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'molam_id', 'event_type', name=op.f('pk_experiment_user_rollups'))
    )
    op.create_index('ix_experiment_user_rollups_variant', 'experiment_user_rollups', ['experiment_id', 'variant_id', 'event_type'], unique=False)
    op.create_table('experiment_variant_rollups',
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('variant_id', sa.UUID(), nullable=False),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('events', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('users', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('value_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('value_sum', sa.Double(), server_default='0', nullable=False),
    sa.Column('value_sum_squares', sa.Double(), server_default='0', nullable=False),
    sa.Column('user_value_sum_squares', sa.Double(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("event_type IN ('conversion', 'refund', 'churn', 'fraud_alert', 'click', 'view')", name=op.f('ck_experiment_variant_rollups_event_type')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_variant_rollups_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variant_id'], ['experiment_variants.id'], name=op.f('fk_experiment_variant_rollups_variant_id_experiment_variants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'variant_id', 'event_type', name=op.f('pk_experiment_variant_rollups'))
    )
    op.create_table('sira_recommendations',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('variant_id', sa.UUID(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_sira_recommendations_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variant_id'], ['experiment_variants.id'], name=op.f('fk_sira_recommendations_variant_id_experiment_variants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sira_recommendations')),
    sa.UniqueConstraint('experiment_id', 'variant_id', 'kind', name='uq_sira_recommendations_once')
    )

    op.execute(AUDIT_IMMUTABLE_FUNCTION)
    op.execute(
        "CREATE TRIGGER experiment_audit_logs_no_update_delete BEFORE UPDATE OR DELETE "
        "ON experiment_audit_logs FOR EACH ROW EXECUTE FUNCTION experiment_audit_logs_immutable()"
    )
    op.execute(
        "CREATE TRIGGER experiment_audit_logs_no_truncate BEFORE TRUNCATE "
        "ON experiment_audit_logs FOR EACH STATEMENT EXECUTE FUNCTION experiment_audit_logs_immutable()"
    )

def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS experiment_audit_logs_no_truncate ON experiment_audit_logs")
    op.execute("DROP TRIGGER IF EXISTS experiment_audit_logs_no_update_delete ON experiment_audit_logs")
    op.execute("DROP FUNCTION IF EXISTS experiment_audit_logs_immutable()")
    op.drop_table('sira_recommendations')
    op.drop_table('experiment_variant_rollups')
    op.drop_index('ix_experiment_user_rollups_variant', table_name='experiment_user_rollups')
    op.drop_table('experiment_user_rollups')
    op.drop_index('ix_experiment_metrics_experiment_id_variant_id', table_name='experiment_metrics')
    op.drop_table('experiment_metrics')
    op.drop_table('experiment_bandit_state')
    op.drop_index('ix_experiment_bandit_history_experiment_id_computed_at', table_name='experiment_bandit_history')
    op.drop_table('experiment_bandit_history')
    op.drop_index('ix_experiment_assignments_variant_id', table_name='experiment_assignments')
    op.drop_table('experiment_assignments')
    op.drop_index('ix_sira_reports_experiment_id_created_at', table_name='sira_reports')
    op.drop_table('sira_reports')
    op.drop_index('uq_experiment_variants_one_control', table_name='experiment_variants', postgresql_where=sa.text('is_control'))
    op.drop_index(op.f('ix_experiment_variants_experiment_id'), table_name='experiment_variants')
    op.drop_table('experiment_variants')
    op.drop_index('ix_experiments_status_created_at', table_name='experiments')
    op.drop_table('experiments')
    op.drop_index(op.f('ix_experiment_metric_dead_letters_event_id'), table_name='experiment_metric_dead_letters')
    op.drop_table('experiment_metric_dead_letters')
    op.drop_index('ix_experiment_audit_logs_experiment_id_id', table_name='experiment_audit_logs')
    op.drop_table('experiment_audit_logs')

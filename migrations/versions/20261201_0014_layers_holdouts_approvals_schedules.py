"""layers, holdouts, four-eyes approvals and schedules

Revision ID: 20261201_0014
Revises: 20261201_0009
Create Date: 2026-12-01 22:04:50.369065
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '20261201_0014'
down_revision = "20261201_0010"
branch_labels = None
depends_on = None

HOLDOUT_PERCENT_IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION experiment_holdouts_percent_immutable() RETURNS trigger AS $$
BEGIN
    IF NEW.percent IS DISTINCT FROM OLD.percent THEN
        RAISE EXCEPTION 'a holdout''s percent cannot change (it would move users in and out of it)'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql
"""


# Two experiments of one layer never own overlapping bucket ranges. A trigger rather
# than an EXCLUDE constraint: uuid equality inside GiST needs the btree_gist extension,
# which not every PostgreSQL build ships (the embedded one of `make run` does not). The
# trigger locks the layer's row first, so concurrent allocations in one layer run one
# after the other and each sees the ranges the previous one committed (READ COMMITTED:
# every statement of the function takes a new snapshot).
LAYER_RANGE_DISJOINT_FUNCTION = """
CREATE OR REPLACE FUNCTION experiments_layer_range_disjoint() RETURNS trigger AS $$
BEGIN
    IF NEW.layer_range_start IS NULL THEN
        RETURN NEW;
    END IF;
    PERFORM 1 FROM experiment_layers WHERE id = NEW.layer_id FOR UPDATE;
    IF EXISTS (
        SELECT 1 FROM experiments e
        WHERE e.layer_id = NEW.layer_id AND e.id <> NEW.id AND e.layer_range_start IS NOT NULL
          AND int4range(e.layer_range_start, e.layer_range_end) && int4range(NEW.layer_range_start, NEW.layer_range_end)
    ) THEN
        RAISE EXCEPTION 'bucket range [%, %) overlaps another experiment of layer %',
            NEW.layer_range_start, NEW.layer_range_end, NEW.layer_id
            USING ERRCODE = 'exclusion_violation', CONSTRAINT = 'ex_experiments_layer_range_disjoint';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table('experiment_holdouts',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('percent', sa.Numeric(precision=5, scale=2), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('percent > 0 AND percent <= 50', name=op.f('ck_experiment_holdouts_percent_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_holdouts'))
    )
    op.create_index('uq_experiment_holdouts_name', 'experiment_holdouts', ['name'], unique=True)
    op.create_table('experiment_layers',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_layers'))
    )
    op.create_index('uq_experiment_layers_name', 'experiment_layers', ['name'], unique=True)
    op.create_table('experiment_approval_requests',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('comment', sa.Text(), server_default='', nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('experiment_version', sa.Integer(), nullable=False),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('decision_comment', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('invalidated_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("(status = 'pending') = (decided_at IS NULL) OR status = 'invalidated'", name=op.f('ck_experiment_approval_requests_decided_when_decided')),
    sa.CheckConstraint("status IN ('pending', 'approved', 'rejected', 'invalidated')", name=op.f('ck_experiment_approval_requests_status')),
    sa.CheckConstraint('decided_by IS NULL OR decided_by <> requested_by', name=op.f('ck_experiment_approval_requests_four_eyes')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_approval_requests_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_approval_requests'))
    )
    op.create_index(op.f('ix_experiment_approval_requests_experiment_id'), 'experiment_approval_requests', ['experiment_id'], unique=False)
    op.create_index('ix_experiment_approval_requests_status_requested_at', 'experiment_approval_requests', ['status', 'requested_at'], unique=False)
    op.create_index('uq_experiment_approval_requests_open', 'experiment_approval_requests', ['experiment_id'], unique=True, postgresql_where=sa.text("status IN ('pending', 'approved')"))
    op.create_table('experiment_holdout_events',
    sa.Column('holdout_id', sa.UUID(), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('molam_id', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_holdout_events_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['holdout_id'], ['experiment_holdouts.id'], name=op.f('fk_experiment_holdout_events_holdout_id_experiment_holdouts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('holdout_id', 'event_id', name=op.f('pk_experiment_holdout_events'))
    )
    op.create_index('ix_experiment_holdout_events_holdout_id_event_type', 'experiment_holdout_events', ['holdout_id', 'event_type'], unique=False)
    op.create_table('experiment_holdout_links',
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('holdout_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_holdout_links_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['holdout_id'], ['experiment_holdouts.id'], name=op.f('fk_experiment_holdout_links_holdout_id_experiment_holdouts'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('experiment_id', 'holdout_id', name=op.f('pk_experiment_holdout_links'))
    )
    op.create_index('ix_experiment_holdout_links_holdout_id', 'experiment_holdout_links', ['holdout_id'], unique=False)
    op.create_table('experiment_holdout_members',
    sa.Column('holdout_id', sa.UUID(), nullable=False),
    sa.Column('molam_id', sa.String(length=200), nullable=False),
    sa.Column('first_experiment_id', sa.UUID(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['first_experiment_id'], ['experiments.id'], name=op.f('fk_experiment_holdout_members_first_experiment_id_experiments'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['holdout_id'], ['experiment_holdouts.id'], name=op.f('fk_experiment_holdout_members_holdout_id_experiment_holdouts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('holdout_id', 'molam_id', name=op.f('pk_experiment_holdout_members'))
    )
    op.create_table('experiment_schedule_attempts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('experiment_id', sa.UUID(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('scheduled_for', sa.DateTime(timezone=True), nullable=False),
    sa.Column('attempted_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('succeeded', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("action IN ('start', 'stop')", name=op.f('ck_experiment_schedule_attempts_action')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_experiment_schedule_attempts_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_schedule_attempts'))
    )
    op.create_index('ix_experiment_schedule_attempts_experiment_id_id', 'experiment_schedule_attempts', ['experiment_id', 'id'], unique=False)
    op.add_column('experiments', sa.Column('category', sa.String(length=64), nullable=True))
    op.add_column('experiments', sa.Column('requires_approval', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.add_column('experiments', sa.Column('layer_id', sa.UUID(), nullable=True))
    op.add_column('experiments', sa.Column('layer_allocation', sa.Numeric(precision=5, scale=2), nullable=True))
    op.add_column('experiments', sa.Column('layer_range_start', sa.Integer(), nullable=True))
    op.add_column('experiments', sa.Column('layer_range_end', sa.Integer(), nullable=True))
    op.add_column('experiments', sa.Column('start_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('experiments', sa.Column('end_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_experiments_end_at', 'experiments', ['end_at'], unique=False, postgresql_where=sa.text("end_at IS NOT NULL AND status = 'running'"))
    op.create_index(op.f('ix_experiments_layer_id'), 'experiments', ['layer_id'], unique=False)
    op.create_index('ix_experiments_start_at', 'experiments', ['start_at'], unique=False, postgresql_where=sa.text("start_at IS NOT NULL AND status = 'draft'"))
    op.create_foreign_key(op.f('fk_experiments_layer_id_experiment_layers'), 'experiments', 'experiment_layers', ['layer_id'], ['id'], ondelete='RESTRICT')
    op.create_check_constraint(
        op.f('ck_experiments_layer_allocation_range'), 'experiments',
        'layer_allocation IS NULL OR (layer_allocation > 0 AND layer_allocation <= 100)',
    )
    op.create_check_constraint(
        op.f('ck_experiments_layer_allocation_with_layer'), 'experiments', '(layer_id IS NULL) = (layer_allocation IS NULL)'
    )
    op.create_check_constraint(
        op.f('ck_experiments_layer_range_valid'), 'experiments',
        '(layer_range_start IS NULL) = (layer_range_end IS NULL) AND (layer_range_start IS NULL OR '
        '(layer_id IS NOT NULL AND layer_range_start >= 0 AND layer_range_end <= 10000 '
        'AND layer_range_start < layer_range_end))',
    )
    op.create_check_constraint(
        op.f('ck_experiments_schedule_order'), 'experiments', 'start_at IS NULL OR end_at IS NULL OR start_at < end_at'
    )
    op.execute(LAYER_RANGE_DISJOINT_FUNCTION)
    op.execute(
        "CREATE TRIGGER experiments_layer_range_disjoint BEFORE INSERT OR UPDATE OF layer_id, layer_range_start, "
        "layer_range_end ON experiments FOR EACH ROW EXECUTE FUNCTION experiments_layer_range_disjoint()"
    )
    op.execute(HOLDOUT_PERCENT_IMMUTABLE_FUNCTION)
    op.execute(
        "CREATE TRIGGER experiment_holdouts_percent_immutable BEFORE UPDATE ON experiment_holdouts "
        "FOR EACH ROW EXECUTE FUNCTION experiment_holdouts_percent_immutable()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS experiment_holdouts_percent_immutable ON experiment_holdouts")
    op.execute("DROP FUNCTION IF EXISTS experiment_holdouts_percent_immutable()")
    op.execute("DROP TRIGGER IF EXISTS experiments_layer_range_disjoint ON experiments")
    op.execute("DROP FUNCTION IF EXISTS experiments_layer_range_disjoint()")
    for name in ('schedule_order', 'layer_range_valid', 'layer_allocation_with_layer', 'layer_allocation_range'):
        op.drop_constraint(op.f(f'ck_experiments_{name}'), 'experiments', type_='check')
    op.drop_constraint(op.f('fk_experiments_layer_id_experiment_layers'), 'experiments', type_='foreignkey')
    op.drop_index('ix_experiments_start_at', table_name='experiments', postgresql_where=sa.text("start_at IS NOT NULL AND status = 'draft'"))
    op.drop_index(op.f('ix_experiments_layer_id'), table_name='experiments')
    op.drop_index('ix_experiments_end_at', table_name='experiments', postgresql_where=sa.text("end_at IS NOT NULL AND status = 'running'"))
    op.drop_column('experiments', 'end_at')
    op.drop_column('experiments', 'start_at')
    op.drop_column('experiments', 'layer_range_end')
    op.drop_column('experiments', 'layer_range_start')
    op.drop_column('experiments', 'layer_allocation')
    op.drop_column('experiments', 'layer_id')
    op.drop_column('experiments', 'requires_approval')
    op.drop_column('experiments', 'category')
    op.drop_index('ix_experiment_schedule_attempts_experiment_id_id', table_name='experiment_schedule_attempts')
    op.drop_table('experiment_schedule_attempts')
    op.drop_table('experiment_holdout_members')
    op.drop_index('ix_experiment_holdout_links_holdout_id', table_name='experiment_holdout_links')
    op.drop_table('experiment_holdout_links')
    op.drop_index('ix_experiment_holdout_events_holdout_id_event_type', table_name='experiment_holdout_events')
    op.drop_table('experiment_holdout_events')
    op.drop_index('uq_experiment_approval_requests_open', table_name='experiment_approval_requests', postgresql_where=sa.text("status IN ('pending', 'approved')"))
    op.drop_index('ix_experiment_approval_requests_status_requested_at', table_name='experiment_approval_requests')
    op.drop_index(op.f('ix_experiment_approval_requests_experiment_id'), table_name='experiment_approval_requests')
    op.drop_table('experiment_approval_requests')
    op.drop_index('uq_experiment_layers_name', table_name='experiment_layers')
    op.drop_table('experiment_layers')
    op.drop_index('uq_experiment_holdouts_name', table_name='experiment_holdouts')
    op.drop_table('experiment_holdouts')

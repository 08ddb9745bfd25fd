"""allocation periods on assignments, attribution windows, published weight periods

Every assignment records the allocation period it was made in and the probability
with which its arm was chosen, so that SIRA can compare arms within periods when a
bandit (or a pause) changes the split; the bandit state records the period of the
weights in force; experiments get per-event-type attribution windows.

Revision ID: 20261201_0009
Revises: 0001
Create Date: 2026-12-01 22:15:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "20261201_0009"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiment_assignments", sa.Column("period", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("experiment_assignments", sa.Column("probability", sa.Double(), nullable=True))
    op.create_check_constraint(
        op.f("ck_experiment_assignments_probability_range"),
        "experiment_assignments",
        "probability IS NULL OR (probability > 0 AND probability <= 1)",
    )
    op.create_index(
        "ix_experiment_assignments_variant_id_period",
        "experiment_assignments",
        ["variant_id", "period"],
        unique=False,
        postgresql_include=["probability", "assigned_at"],
    )
    op.drop_index("ix_experiment_assignments_variant_id", table_name="experiment_assignments")
    op.add_column("experiment_bandit_state", sa.Column("period", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column(
        "experiments",
        sa.Column("attribution_window_s", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("experiments", "attribution_window_s")
    op.drop_column("experiment_bandit_state", "period")
    op.create_index("ix_experiment_assignments_variant_id", "experiment_assignments", ["variant_id"], unique=False)
    op.drop_index("ix_experiment_assignments_variant_id_period", table_name="experiment_assignments")
    op.drop_constraint(op.f("ck_experiment_assignments_probability_range"), "experiment_assignments", type_="check")
    op.drop_column("experiment_assignments", "probability")
    op.drop_column("experiment_assignments", "period")

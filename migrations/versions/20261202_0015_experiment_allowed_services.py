"""experiments.allowed_services: the service roles that may assign and track on an experiment

Revision ID: 20261202_0015_allowed_services
Revises: 20261201_0014
Create Date: 2026-12-02 03:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "20261202_0015_allowed_services"
down_revision = "20261201_0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL (every existing experiment): every service role may assign and track.
    op.add_column("experiments", sa.Column("allowed_services", postgresql.ARRAY(sa.String(length=64)), nullable=True))


def downgrade() -> None:
    op.drop_column("experiments", "allowed_services")

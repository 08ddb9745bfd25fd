"""money: amounts in minor units, per-day money rollups, exchange rates, CUPED covariates

Revision ID: 20261201_0010
Revises: 20261201_0009
Create Date: 2026-12-01 22:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "20261201_0010"
down_revision = "20261201_0009"
branch_labels = None
depends_on = None

EVENT_TYPE_CHECK = "event_type IN ('conversion', 'refund', 'churn', 'fraud_alert', 'click', 'view')"

FX_IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION fx_rates_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'fx_rates is append-only: publish a new revision instead of %', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


def _backfill_money() -> None:
    """Events stored before this revision with a currency: value (major units) -> exact minor units.

    Only amounts that are exact in their currency move; the value rollups still hold
    them until ``reconcile`` rebuilds the rollups from the raw events.
    """
    from core.money import CURRENCY_EXPONENTS

    table = ", ".join(f"('{code}', {places})" for code, places in sorted(CURRENCY_EXPONENTS.items()))
    op.execute(
        f"""
        UPDATE experiment_metrics m
        SET amount_minor = (m.value::numeric * 10 ^ x.places)::bigint, value = NULL
        FROM (VALUES {table}) AS x(code, places)
        WHERE m.currency = x.code AND m.value IS NOT NULL AND m.value >= 0
          AND m.value::numeric * 10 ^ x.places = round(m.value::numeric * 10 ^ x.places)
          AND m.value::numeric * 10 ^ x.places <= 1e15
        """
    )
    op.execute(
        """
        INSERT INTO experiment_user_money_rollups
            (experiment_id, molam_id, event_type, currency, day, variant_id, events, amount_minor)
        SELECT experiment_id, molam_id, event_type, currency, (occurred_at AT TIME ZONE 'UTC')::date,
               (array_agg(variant_id ORDER BY occurred_at, id))[1], count(*), sum(amount_minor)
        FROM experiment_metrics
        WHERE amount_minor IS NOT NULL
        GROUP BY experiment_id, molam_id, event_type, currency, (occurred_at AT TIME ZONE 'UTC')::date
        """
    )


def upgrade() -> None:
    op.add_column("experiment_metrics", sa.Column("amount_minor", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f("ck_experiment_metrics_money_in_minor_units"),
        "experiment_metrics",
        "amount_minor IS NULL OR (currency IS NOT NULL AND value IS NULL AND amount_minor >= 0)",
    )
    op.add_column(
        "experiments", sa.Column("reporting_currency", sa.String(length=3), server_default="EUR", nullable=False)
    )
    op.add_column(
        "experiments",
        sa.Column("value_cap_percentile", sa.Numeric(precision=6, scale=3), server_default="99.5", nullable=True),
    )
    # Existing experiments get the default cap; new rows get theirs from the API (null = no capping).
    op.alter_column("experiments", "value_cap_percentile", server_default=None)
    op.create_check_constraint(
        op.f("ck_experiments_value_cap_percentile_range"),
        "experiments",
        "value_cap_percentile IS NULL OR (value_cap_percentile >= 50 AND value_cap_percentile < 100)",
    )
    op.add_column("experiment_assignments", sa.Column("txn_count", sa.Integer(), nullable=True))
    op.add_column("experiment_assignments", sa.Column("pre_exposure_value", sa.Double(), nullable=True))

    op.create_table(
        "experiment_user_money_rollups",
        sa.Column("experiment_id", sa.UUID(), nullable=False),
        sa.Column("molam_id", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("variant_id", sa.UUID(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.Numeric(precision=38, scale=0), nullable=False),
        sa.CheckConstraint(EVENT_TYPE_CHECK, name=op.f("ck_experiment_user_money_rollups_event_type")),
        sa.CheckConstraint("amount_minor >= 0", name=op.f("ck_experiment_user_money_rollups_amount_non_negative")),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiments.id"],
            name=op.f("fk_experiment_user_money_rollups_experiment_id_experiments"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["variant_id"], ["experiment_variants.id"],
            name=op.f("fk_experiment_user_money_rollups_variant_id_experiment_variants"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id", "molam_id", "event_type", "currency", "day", name=op.f("pk_experiment_user_money_rollups")
        ),
    )
    op.create_table(
        "fx_rates",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("base", sa.String(length=3), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("rate", sa.Numeric(precision=30, scale=12), nullable=False),
        sa.Column("recorded_by", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("rate > 0", name=op.f("ck_fx_rates_rate_positive")),
        sa.CheckConstraint("revision >= 1", name=op.f("ck_fx_rates_revision_positive")),
        sa.CheckConstraint("currency <> base", name=op.f("ck_fx_rates_not_base")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fx_rates")),
        sa.UniqueConstraint("base", "valid_from", "revision", "currency", name="uq_fx_rates_set_currency"),
    )
    op.create_index("ix_fx_rates_currency_valid_from", "fx_rates", ["currency", "valid_from"], unique=False)
    _backfill_money()
    op.execute(FX_IMMUTABLE_FUNCTION)
    op.execute(
        "CREATE TRIGGER fx_rates_no_update_delete BEFORE UPDATE OR DELETE "
        "ON fx_rates FOR EACH ROW EXECUTE FUNCTION fx_rates_immutable()"
    )
    op.execute(
        "CREATE TRIGGER fx_rates_no_truncate BEFORE TRUNCATE "
        "ON fx_rates FOR EACH STATEMENT EXECUTE FUNCTION fx_rates_immutable()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS fx_rates_no_truncate ON fx_rates")
    op.execute("DROP TRIGGER IF EXISTS fx_rates_no_update_delete ON fx_rates")
    op.execute("DROP FUNCTION IF EXISTS fx_rates_immutable()")
    op.drop_index("ix_fx_rates_currency_valid_from", table_name="fx_rates")
    op.drop_table("fx_rates")
    op.drop_table("experiment_user_money_rollups")
    op.drop_column("experiment_assignments", "pre_exposure_value")
    op.drop_column("experiment_assignments", "txn_count")
    op.drop_constraint(op.f("ck_experiments_value_cap_percentile_range"), "experiments", type_="check")
    op.drop_column("experiments", "value_cap_percentile")
    op.drop_column("experiments", "reporting_currency")
    op.drop_constraint(op.f("ck_experiment_metrics_money_in_minor_units"), "experiment_metrics", type_="check")
    op.drop_column("experiment_metrics", "amount_minor")

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, created_at_column
from .enums import EVENT_TYPES, sql_in


class MetricEvent(Base):
    """One tracked event, exactly as accepted (append-only)."""

    __tablename__ = "experiment_metrics"
    __table_args__ = (
        CheckConstraint(f"event_type IN ({sql_in(EVENT_TYPES)})", name="event_type"),
        CheckConstraint("value IS NULL OR (value = value AND abs(value) < 'Infinity')", name="value_finite"),
        CheckConstraint(
            "amount_minor IS NULL OR (currency IS NOT NULL AND value IS NULL AND amount_minor >= 0)",
            name="money_in_minor_units",
        ),
        Index("ix_experiment_metrics_experiment_id_variant_id", "experiment_id", "variant_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    variant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_variants.id", ondelete="CASCADE"))
    molam_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None]
    currency: Mapped[str | None] = mapped_column(String(3))
    # A money event's amount in the currency's minor units (exact); ``value`` is then NULL.
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = created_at_column()


class VariantRollup(Base):
    """Per (experiment, variant, event type) sufficient statistics.

    ``user_value_sum_squares`` is the sum over users of the square of each user's
    value sum, so the per-user mean and its variance follow without a scan.
    """

    __tablename__ = "experiment_variant_rollups"
    __table_args__ = (CheckConstraint(f"event_type IN ({sql_in(EVENT_TYPES)})", name="event_type"),)

    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    variant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiment_variants.id", ondelete="CASCADE"), primary_key=True
    )
    event_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, server_default="0")
    users: Mapped[int] = mapped_column(BigInteger, server_default="0")
    value_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    value_sum: Mapped[float] = mapped_column(server_default="0")
    value_sum_squares: Mapped[float] = mapped_column(server_default="0")
    user_value_sum_squares: Mapped[float] = mapped_column(server_default="0")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class UserRollup(Base):
    """Per (experiment, user, event type) aggregates: per-user means and D7 retention."""

    __tablename__ = "experiment_user_rollups"
    __table_args__ = (
        CheckConstraint(f"event_type IN ({sql_in(EVENT_TYPES)})", name="event_type"),
        Index("ix_experiment_user_rollups_variant", "experiment_id", "variant_id", "event_type"),
    )

    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    molam_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    variant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_variants.id", ondelete="CASCADE"))
    events: Mapped[int] = mapped_column(BigInteger, server_default="0")
    value_sum: Mapped[float] = mapped_column(server_default="0")
    first_event_at: Mapped[datetime]
    last_event_at: Mapped[datetime]


class DeadLetter(Base):
    """An event that failed validation at write time: kept with its error, never retried."""

    __tablename__ = "experiment_metric_dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    event_id: Mapped[str | None] = mapped_column(String(128), index=True)
    payload: Mapped[dict[str, Any]]
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()

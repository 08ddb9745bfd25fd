"""Money: per-user, per-currency, per-day amounts and the exchange rates that price them."""
from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, created_at_column
from .enums import EVENT_TYPES, sql_in


class UserMoneyRollup(Base):
    """Per (experiment, user, event type, currency, UTC day): events and their exact amount.

    Kept per day so that each day is converted at that day's rate, and per currency
    in minor units so that a rate arriving late (or a corrected one) re-prices the
    days it covers without reading raw events.
    """

    __tablename__ = "experiment_user_money_rollups"
    __table_args__ = (
        CheckConstraint(f"event_type IN ({sql_in(EVENT_TYPES)})", name="event_type"),
        CheckConstraint("amount_minor >= 0", name="amount_non_negative"),
    )

    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    molam_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    variant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_variants.id", ondelete="CASCADE"))
    events: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[Decimal] = mapped_column(Numeric(38, 0))


class FxRate(Base):
    """One rate of one published set: ``rate`` units of ``currency`` per one ``base``.

    Append-only (a trigger refuses UPDATE and DELETE): publishing a set again for
    the same ``base`` and ``valid_from`` adds a new ``revision``, and the newest
    revision of a set is the one in force. A set is valid from ``valid_from`` until
    a set with a later ``valid_from`` prices the same currency.
    """

    __tablename__ = "fx_rates"
    __table_args__ = (
        UniqueConstraint("base", "valid_from", "revision", "currency", name="uq_fx_rates_set_currency"),
        CheckConstraint("rate > 0", name="rate_positive"),
        CheckConstraint("revision >= 1", name="revision_positive"),
        CheckConstraint("currency <> base", name="not_base"),
        Index("ix_fx_rates_currency_valid_from", "currency", "valid_from"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    base: Mapped[str] = mapped_column(String(3))
    valid_from: Mapped[date]
    revision: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    rate: Mapped[Decimal] = mapped_column(Numeric(30, 12))
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = created_at_column()

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, created_at_column, uuid_pk


class BanditState(Base):
    """SIRA's current posterior and weight per arm (one row per variant)."""

    __tablename__ = "experiment_bandit_state"

    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    variant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiment_variants.id", ondelete="CASCADE"), primary_key=True
    )
    users: Mapped[int] = mapped_column(BigInteger, server_default="0")
    successes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    alpha: Mapped[float]
    beta: Mapped[float]
    prob_best: Mapped[float]
    weight: Mapped[float]
    burn_in: Mapped[bool]
    # Sequence number of the published weights in force (0 = the configured shares);
    # bumped each time SIRA replaces them, which opens a new allocation period.
    period: Mapped[int] = mapped_column(BigInteger, server_default="0")
    computed_at: Mapped[datetime] = mapped_column(server_default=func.now())


class BanditHistory(Base):
    """Append-only history of :class:`BanditState`, for charts."""

    __tablename__ = "experiment_bandit_history"
    __table_args__ = (Index("ix_experiment_bandit_history_experiment_id_computed_at", "experiment_id", "computed_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    variant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_variants.id", ondelete="CASCADE"))
    users: Mapped[int] = mapped_column(BigInteger)
    successes: Mapped[int] = mapped_column(BigInteger)
    alpha: Mapped[float]
    beta: Mapped[float]
    prob_best: Mapped[float]
    weight: Mapped[float]
    computed_at: Mapped[datetime]


class Recommendation(Base):
    """A fail-fast or guardrail finding, recorded once per (experiment, variant, kind)."""

    __tablename__ = "sira_recommendations"
    __table_args__ = (
        UniqueConstraint("experiment_id", "variant_id", "kind", name="uq_sira_recommendations_once"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    variant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_variants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # fail_fast | guardrail_breach
    rule: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = created_at_column()


class Report(Base):
    """A scheduled SIRA report, one per experiment per day."""

    __tablename__ = "sira_reports"
    __table_args__ = (
        UniqueConstraint("experiment_id", "report_date", name="uq_sira_reports_experiment_id_report_date"),
        Index("ix_sira_reports_experiment_id_created_at", "experiment_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    report_date: Mapped[date]
    content: Mapped[dict[str, Any]]
    markdown: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()

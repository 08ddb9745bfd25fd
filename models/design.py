"""Experiment design and governance: layers, holdouts, approvals and schedule attempts."""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, Numeric, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, created_at_column, uuid_pk
from .enums import APPROVAL_STATUSES, SCHEDULE_ACTIONS, sql_in


class Layer(Base):
    """A set of mutually exclusive experiments sharing one 10,000-bucket hash space."""

    __tablename__ = "experiment_layers"
    __table_args__ = (Index("uq_experiment_layers_name", "name", unique=True),)

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, server_default="")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = created_at_column()


class Holdout(Base):
    """A long-term holdout: ``percent`` of users kept out of every experiment that lists it."""

    __tablename__ = "experiment_holdouts"
    __table_args__ = (
        Index("uq_experiment_holdouts_name", "name", unique=True),
        CheckConstraint("percent > 0 AND percent <= 50", name="percent_range"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, server_default="")
    # Immutable (trigger): changing it would move users in and out of the holdout.
    percent: Mapped[Decimal] = mapped_column(Numeric(5, 2))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = created_at_column()


class ExperimentHoldout(Base):
    __tablename__ = "experiment_holdout_links"
    __table_args__ = (Index("ix_experiment_holdout_links_holdout_id", "holdout_id"),)

    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    holdout_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_holdouts.id", ondelete="RESTRICT"), primary_key=True)


class HoldoutMember(Base):
    """A user found in a holdout, recorded the first time one of its experiments asked."""

    __tablename__ = "experiment_holdout_members"

    holdout_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_holdouts.id", ondelete="CASCADE"), primary_key=True)
    molam_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    first_experiment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("experiments.id", ondelete="SET NULL"))
    recorded_at: Mapped[datetime] = created_at_column()


class HoldoutEvent(Base):
    """An event of a holdout member, tracked through one of the holdout's experiments."""

    __tablename__ = "experiment_holdout_events"
    __table_args__ = (Index("ix_experiment_holdout_events_holdout_id_event_type", "holdout_id", "event_type"),)

    holdout_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_holdouts.id", ondelete="CASCADE"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    molam_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None]
    currency: Mapped[str | None] = mapped_column(String(3))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = created_at_column()


class ApprovalRequest(Base):
    """Four-eyes approval of an experiment's start: asked by one person, decided by another."""

    __tablename__ = "experiment_approval_requests"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_in(APPROVAL_STATUSES)})", name="status"),
        CheckConstraint("decided_by IS NULL OR decided_by <> requested_by", name="four_eyes"),
        CheckConstraint(
            "(status = 'pending') = (decided_at IS NULL) OR status = 'invalidated'", name="decided_when_decided"
        ),
        # At most one request in play (pending or approved) per experiment.
        Index(
            "uq_experiment_approval_requests_open",
            "experiment_id",
            unique=True,
            postgresql_where=text("status IN ('pending', 'approved')"),
        ),
        Index("ix_experiment_approval_requests_status_requested_at", "status", "requested_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    requested_by: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text, server_default="")
    requested_at: Mapped[datetime] = created_at_column()
    # The experiment version the request is about; any later draft change invalidates it.
    experiment_version: Mapped[int]
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decision_comment: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]
    invalidated_at: Mapped[datetime | None]


class ScheduleAttempt(Base):
    """One run of a scheduled start or stop, successful or not (failures are retried)."""

    __tablename__ = "experiment_schedule_attempts"
    __table_args__ = (
        CheckConstraint(f"action IN ({sql_in(SCHEDULE_ACTIONS)})", name="action"),
        Index("ix_experiment_schedule_attempts_experiment_id_id", "experiment_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(16))
    scheduled_for: Mapped[datetime]
    attempted_at: Mapped[datetime] = created_at_column()
    succeeded: Mapped[bool]
    error: Mapped[str | None] = mapped_column(Text)

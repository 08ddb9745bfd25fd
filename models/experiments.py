from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, ExcludeConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, created_at_column, uuid_pk
from .enums import EVENT_TYPES, MODES, STATUSES, sql_in

if TYPE_CHECKING:
    from .design import Holdout


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_in(STATUSES)})", name="status"),
        CheckConstraint(f"mode IN ({sql_in(MODES)})", name="mode"),
        CheckConstraint(f"primary_metric IN ({sql_in(EVENT_TYPES)})", name="primary_metric"),
        CheckConstraint("coverage > 0 AND coverage <= 100", name="coverage_range"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint(
            "value_cap_percentile IS NULL OR (value_cap_percentile >= 50 AND value_cap_percentile < 100)",
            name="value_cap_percentile_range",
        ),
        Index("ix_experiments_status_created_at", "status", "created_at"),
        CheckConstraint(
            "layer_allocation IS NULL OR (layer_allocation > 0 AND layer_allocation <= 100)",
            name="layer_allocation_range",
        ),
        CheckConstraint("(layer_id IS NULL) = (layer_allocation IS NULL)", name="layer_allocation_with_layer"),
        CheckConstraint(
            "(layer_range_start IS NULL) = (layer_range_end IS NULL) AND (layer_range_start IS NULL OR "
            "(layer_id IS NOT NULL AND layer_range_start >= 0 AND layer_range_end <= 10000 "
            "AND layer_range_start < layer_range_end))",
            name="layer_range_valid",
        ),
        CheckConstraint("start_at IS NULL OR end_at IS NULL OR start_at < end_at", name="schedule_order"),
        # Two experiments of one layer never own overlapping bucket ranges.
        ExcludeConstraint(
            (text("layer_id"), "="),
            (text("int4range(layer_range_start, layer_range_end)"), "&&"),
            using="gist",
            where=text("layer_range_start IS NOT NULL"),
            name="ex_experiments_layer_range_disjoint",
        ),
        Index("ix_experiments_start_at", "start_at", postgresql_where=text("start_at IS NOT NULL AND status = 'draft'")),
        Index("ix_experiments_end_at", "end_at", postgresql_where=text("end_at IS NOT NULL AND status = 'running'")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, server_default="")
    status: Mapped[str] = mapped_column(String(16), server_default="draft")
    mode: Mapped[str] = mapped_column(String(16), server_default="ab")
    coverage: Mapped[Decimal] = mapped_column(Numeric(5, 2), server_default="100")
    primary_metric: Mapped[str] = mapped_column(String(32), server_default="conversion")
    targeting: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # SIRA settings: {"rule", "min_samples", "threshold", "action"}
    fail_fast: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # {"event_types": [...], "action": ...}
    guardrails: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # {"min_samples", "floor"}
    bandit: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # {event_type: seconds or null}; NULL = the mode's default (see services.analysis.inputs)
    attribution_window_s: Mapped[dict[str, Any] | None]
    # Money results are converted into this currency at each event day's rate.
    reporting_currency: Mapped[str] = mapped_column(String(3), server_default="EUR")
    # Per-user revenue above this percentile (of users with revenue, all arms pooled) is
    # capped for the per-user statistics; NULL means no capping. The API's default is 99.5
    # (no server default: an explicit null must stay null).
    value_cap_percentile: Mapped[Decimal | None] = mapped_column(Numeric(6, 3))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    started_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    # Bumped on every mutation; caches key definitions by it.
    version: Mapped[int] = mapped_column(server_default="1")
    # Free-form tag; some categories ("pricing") force four-eyes approval.
    category: Mapped[str | None] = mapped_column(String(64))
    requires_approval: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Mutual exclusion: the percent of the layer's traffic the experiment takes, and the
    # half-open bucket range [start, end) it owns while running (NULL otherwise).
    layer_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("experiment_layers.id", ondelete="RESTRICT"), index=True)
    layer_allocation: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    layer_range_start: Mapped[int | None]
    layer_range_end: Mapped[int | None]
    # Scheduled start and stop (UTC), run by the ``experiments.run_schedules`` beat task.
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    # Service roles (``*_module``) that may assign and track on the experiment; NULL: every one.
    allowed_services: Mapped[list[str] | None] = mapped_column(ARRAY(String(64)))

    variants: Mapped[list[Variant]] = relationship(
        back_populates="experiment",
        order_by="Variant.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )
    holdouts: Mapped[list[Holdout]] = relationship(
        secondary="experiment_holdout_links", lazy="selectin", order_by="Holdout.created_at"
    )

    @property
    def holdout_ids(self) -> list[uuid.UUID]:
        return [h.id for h in self.holdouts]


class Variant(Base):
    __tablename__ = "experiment_variants"
    __table_args__ = (
        UniqueConstraint("experiment_id", "name", name="uq_experiment_variants_experiment_id_name"),
        CheckConstraint("traffic_share >= 0 AND traffic_share <= 100", name="traffic_share_range"),
        CheckConstraint("jsonb_typeof(config) = 'object'", name="config_object"),
        Index(
            "uq_experiment_variants_one_control",
            "experiment_id",
            unique=True,
            postgresql_where=text("is_control"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    traffic_share: Mapped[Decimal] = mapped_column(Numeric(5, 2))
    is_control: Mapped[bool] = mapped_column(server_default=text("false"))
    position: Mapped[int] = mapped_column(server_default="0")
    paused: Mapped[bool] = mapped_column(server_default=text("false"))
    paused_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()

    experiment: Mapped[Experiment] = relationship(back_populates="variants")


class Assignment(Base):
    """Which variant a Molam ID holds in an experiment: the sticky truth."""

    __tablename__ = "experiment_assignments"
    __table_args__ = (
        UniqueConstraint("experiment_id", "molam_id", name="uq_experiment_assignments_experiment_id_molam_id"),
        CheckConstraint("probability IS NULL OR (probability > 0 AND probability <= 1)", name="probability_range"),
        # Per-period user counts (and the logged probabilities, for SRM) are read from
        # this index alone.
        Index(
            "ix_experiment_assignments_variant_id_period",
            "variant_id",
            "period",
            postgresql_include=["probability", "assigned_at"],
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    variant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiment_variants.id", ondelete="CASCADE"))
    molam_id: Mapped[str] = mapped_column(String(200))
    # The request context at first assignment, kept for segment analysis.
    country: Mapped[str | None] = mapped_column(String(2))
    lang: Mapped[str | None] = mapped_column(String(16))
    currency: Mapped[str | None] = mapped_column(String(3))
    region: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(32))
    txn_count: Mapped[int | None]
    # A number the product knew before exposure (e.g. last-30-day spend): CUPED's covariate.
    pre_exposure_value: Mapped[float | None]
    assigned_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # The allocation period the user was assigned in (see services.experiments.assignment.period_id)
    # and the probability with which this arm was chosen in it; NULL for rows from before periods.
    period: Mapped[int] = mapped_column(BigInteger, server_default="0")
    probability: Mapped[float | None]

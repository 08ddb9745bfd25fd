"""Load what SIRA computes on: per-arm counts from the rollups and the assignments.

Everything SIRA shows is a function of three small reads, none of which touches
raw events:

* ``experiment_variant_rollups``: per (variant, event type) events, distinct users
  and value sums, maintained by the ingestion worker;
* the number of users *assigned* to each variant (one ``GROUP BY`` on the indexed
  ``experiment_assignments.variant_id``): the denominator of every rate, so that a
  user who never comes back counts as a failure;
* the experiment and variant rows themselves.

Counts per allocation period and attribution window come from
:mod:`services.analysis.periods`; a fixed split that never changed and has no
windows is served from the rollups alone.

The rollups are read **before** the assignment counts.  A user can only be tracked
after their assignment committed, so every user counted in the rollups snapshot is
already in the later assignments snapshot and ``successes <= users`` holds even
while traffic flows.  Rows written some other way (a manual fix, a test) could
break that, so the counts are still clamped, with a warning.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import bindparam, literal, select, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from models import Experiment, Variant
from models.enums import DEFAULT_GUARDRAILS, EVENT_TYPES, LOWER_IS_BETTER, ExperimentMode, ExperimentStatus
from sira.bandit import BanditConfig
from sira.failfast import DEFAULT_FAIL_FAST_ACTION, DEFAULT_GUARDRAIL_ACTION, DEFAULT_GUARDRAIL_MARGIN, FailFastConfig
from sira.stats import ProportionStats, SampleStats
from sira.strata import PeriodTable

from .periods import PeriodCounts, load_period_counts

#: Attribution window of every event type of a bandit experiment unless configured
#: (seconds): a user informs the bandit and fail-fast once this long has passed since
#: assignment, with the events inside it.  Fixed splits have no window by default.
DEFAULT_BANDIT_WINDOW_S = 3600

log = logging.getLogger(__name__)


def attribution_windows(mode: str, configured: dict[str, Any] | None) -> dict[str, int | None]:
    """Attribution window per event type in seconds (None: no window): the configured
    ones, and for the others the mode's default (an hour for bandits, none otherwise)."""
    default = DEFAULT_BANDIT_WINDOW_S if mode == ExperimentMode.BANDIT.value else None
    configured = configured or {}
    return {event_type: configured.get(event_type, default) for event_type in EVENT_TYPES}


@dataclass(frozen=True)
class RollupCounts:
    """One ``experiment_variant_rollups`` row (zeros when the variant has no such events)."""

    events: int = 0
    users: int = 0
    value_count: int = 0
    value_sum: float = 0.0
    value_sum_squares: float = 0.0
    user_value_sum_squares: float = 0.0


NO_EVENTS = RollupCounts()


@dataclass(frozen=True)
class ArmInput:
    variant_id: uuid.UUID
    name: str
    config: dict[str, Any]
    is_control: bool
    traffic_share: float
    paused: bool
    assigned_users: int
    rollups: dict[str, RollupCounts] = field(default_factory=dict)

    def counts(self, event_type: str) -> RollupCounts:
        return self.rollups.get(event_type, NO_EVENTS)

    def proportion(self, event_type: str) -> ProportionStats:
        """Assigned users and the distinct users among them with an event of this type."""
        successes = self.counts(event_type).users
        if successes > self.assigned_users:
            log.warning(
                "variant %s has %d users with %s events but only %d assigned users; clamping",
                self.variant_id, successes, event_type, self.assigned_users,
            )
            successes = self.assigned_users
        return ProportionStats(users=self.assigned_users, successes=successes)

    def value_sample(self, event_type: str) -> SampleStats:
        """Per-assigned-user value: users without events count as 0."""
        counts = self.counts(event_type)
        return SampleStats(n=self.assigned_users, sum=counts.value_sum, sum_squares=counts.user_value_sum_squares)


@dataclass(frozen=True)
class ExperimentInput:
    id: uuid.UUID
    name: str
    status: str
    mode: str
    primary_metric: str
    fail_fast: dict[str, Any]
    guardrails: dict[str, Any]
    bandit: dict[str, Any]
    started_at: datetime | None
    version: int
    arms: tuple[ArmInput, ...]
    attribution_window_s: dict[str, Any] | None = None
    period_ids: tuple[int, ...] = ()
    # (periods, arms): users assigned and the logged probability of the arm (NaN: no row says)
    period_users: np.ndarray | None = None
    period_probability: np.ndarray | None = None
    period_counts: PeriodCounts | None = None

    @property
    def control_index(self) -> int:
        """Index of the control arm (the first arm if, against the schema's rule, none is marked)."""
        return next((i for i, arm in enumerate(self.arms) if arm.is_control), 0)

    def proportions(self, event_type: str) -> list[ProportionStats]:
        return [arm.proportion(event_type) for arm in self.arms]

    @property
    def windows(self) -> dict[str, int | None]:
        """Attribution window per event type in seconds (None: no window)."""
        return attribution_windows(self.mode, self.attribution_window_s)

    @property
    def periods(self) -> int:
        """How many allocation periods the experiment's assignments span."""
        return len(self.period_ids)

    def table(self, event_type: str, *, matured: bool = False) -> PeriodTable:
        """Users and successes per period and arm for ``event_type``.

        ``matured``: only users whose attribution window has closed, with the events
        inside it (what the bandit and fail-fast decide on).  Without per-period
        counts (one period, no windows) this is one period of the pooled counts.
        """
        counts = self.period_counts
        if counts is None:
            return PeriodTable.single(self.proportions(event_type))
        users = counts.matured[event_type] if matured else counts.users
        successes = counts.matured_successes[event_type] if matured else counts.successes[event_type]
        return PeriodTable(users, np.minimum(successes, users))

    def decision_table(self) -> PeriodTable:
        """The primary metric as SIRA decides on it: matured users, success = the good outcome."""
        table = self.table(self.primary_metric, matured=True)
        return table.flipped() if self.primary_metric in LOWER_IS_BETTER else table

    def matured_users(self, event_type: str) -> list[int]:
        if self.period_counts is None:
            return [arm.assigned_users for arm in self.arms]
        return [int(n) for n in self.period_counts.matured[event_type].sum(axis=0)]

    @property
    def traffic_shares(self) -> list[float]:
        return [arm.traffic_share for arm in self.arms]

    @property
    def paused(self) -> list[bool]:
        return [arm.paused for arm in self.arms]

    @property
    def fail_fast_config(self) -> FailFastConfig:
        settings, default = self.fail_fast or {}, FailFastConfig()
        return FailFastConfig(
            rule=settings.get("rule", default.rule),
            min_samples=int(settings.get("min_samples", default.min_samples)),
            threshold=float(settings.get("threshold", default.threshold)),
        )

    @property
    def fail_fast_action(self) -> str:
        return (self.fail_fast or {}).get("action") or DEFAULT_FAIL_FAST_ACTION

    @property
    def guardrail_event_types(self) -> list[str]:
        configured = (self.guardrails or {}).get("event_types")
        return list(DEFAULT_GUARDRAILS if configured is None else configured)

    @property
    def guardrail_action(self) -> str:
        return (self.guardrails or {}).get("action") or DEFAULT_GUARDRAIL_ACTION

    @property
    def guardrail_margin(self) -> float:
        margin = (self.guardrails or {}).get("margin")
        return DEFAULT_GUARDRAIL_MARGIN if margin is None else float(margin)

    @property
    def bandit_config(self) -> BanditConfig:
        settings, default = self.bandit or {}, BanditConfig()
        return BanditConfig(
            min_samples=int(settings.get("min_samples", default.min_samples)),
            floor=float(settings.get("floor", default.floor)),
        )

    def active_shares(self) -> list[float]:
        """The fixed split actually in force: configured shares over the arms not paused."""
        shares = [0.0 if arm.paused else arm.traffic_share for arm in self.arms]
        total = sum(shares)
        if total <= 0:
            return [0.0] * len(shares)
        return [share / total for share in shares]


_ROLLUPS = text(
    """
    SELECT variant_id, event_type, events, users, value_count, value_sum,
           value_sum_squares, user_value_sum_squares
    FROM experiment_variant_rollups
    WHERE experiment_id = ANY(:experiment_ids)
    """
).bindparams(bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))))

# Index-only scan of ix_experiment_assignments_variant_id: cost grows with the
# number of assigned users, never with the number of events.
_ASSIGNED = text(
    """
    SELECT variant_id, count(*) AS users
    FROM experiment_assignments
    WHERE variant_id = ANY(:variant_ids)
    GROUP BY variant_id
    """
).bindparams(bindparam("variant_ids", type_=ARRAY(UUID(as_uuid=True))))


def _read_rollups(session: Session, experiment_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, RollupCounts]]:
    rollups: dict[uuid.UUID, dict[str, RollupCounts]] = {}
    for row in session.execute(_ROLLUPS, {"experiment_ids": experiment_ids}):
        rollups.setdefault(row.variant_id, {})[row.event_type] = RollupCounts(
            events=int(row.events),
            users=int(row.users),
            value_count=int(row.value_count),
            value_sum=float(row.value_sum),
            value_sum_squares=float(row.value_sum_squares),
            user_value_sum_squares=float(row.user_value_sum_squares),
        )
    return rollups


def _arms(session: Session, variants: Sequence[Any], experiment_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[ArmInput]]:
    """Each experiment's arms with their rollups and assigned users (rollups read first)."""
    rollups = _read_rollups(session, experiment_ids)
    variant_ids = [row.id for row in variants]
    assigned = {
        row.variant_id: int(row.users)
        for row in session.execute(_ASSIGNED, {"variant_ids": variant_ids})
    } if variant_ids else {}
    arms_by_experiment: dict[uuid.UUID, list[ArmInput]] = {}
    for row in variants:
        arms_by_experiment.setdefault(row.experiment_id, []).append(
            ArmInput(
                variant_id=row.id,
                name=row.name,
                config=row.config or {},
                is_control=row.is_control,
                traffic_share=float(row.traffic_share),
                paused=row.paused,
                assigned_users=assigned.get(row.id, 0),
                rollups=rollups.get(row.id, {}),
            )
        )
    return arms_by_experiment


def load_inputs(
    session: Session,
    experiment_ids: Sequence[uuid.UUID],
    *,
    with_config: bool = True,
    now: datetime | None = None,
) -> list[ExperimentInput]:
    """Experiments (in the given order, unknown ids skipped) with their arms' counts.

    The jobs pass ``with_config=False``: variant configs are only needed by insights,
    and parsing thousands of JSON documents per cycle is a measurable share of it.
    """
    if not experiment_ids:
        return []
    experiments = session.execute(
        select(
            Experiment.id, Experiment.name, Experiment.status, Experiment.mode, Experiment.primary_metric,
            Experiment.fail_fast, Experiment.guardrails, Experiment.bandit, Experiment.started_at, Experiment.version,
            Experiment.attribution_window_s,
        ).where(Experiment.id.in_(list(experiment_ids)))
    ).all()
    variants = session.execute(
        select(
            Variant.experiment_id, Variant.id, Variant.name,
            Variant.config if with_config else literal(None).label("config"), Variant.is_control,
            Variant.traffic_share, Variant.paused,
        )
        .where(Variant.experiment_id.in_(list(experiment_ids)))
        .order_by(Variant.experiment_id, Variant.position, Variant.created_at)
    ).all()
    arms_by_experiment = _arms(session, variants, list(experiment_ids))
    by_id = {
        row.id: ExperimentInput(
            id=row.id,
            name=row.name,
            status=row.status,
            mode=row.mode,
            primary_metric=row.primary_metric,
            fail_fast=row.fail_fast or {},
            guardrails=row.guardrails or {},
            bandit=row.bandit or {},
            started_at=row.started_at,
            version=row.version,
            arms=tuple(arms_by_experiment.get(row.id, ())),
            attribution_window_s=row.attribution_window_s,
        )
        for row in experiments
    }
    periods = load_period_counts(session, list(by_id.values()), now or datetime.now(timezone.utc))
    by_id = {
        experiment_id: dataclasses.replace(experiment, **periods[experiment_id])
        for experiment_id, experiment in by_id.items()
    }
    return [by_id[i] for i in experiment_ids if i in by_id]


def running_experiment_ids(session: Session) -> list[uuid.UUID]:
    return list(
        session.execute(
            select(Experiment.id)
            .where(Experiment.status == ExperimentStatus.RUNNING.value)
            .order_by(Experiment.created_at, Experiment.id)
        ).scalars()
    )


def chunks(items: Sequence[uuid.UUID], size: int) -> Iterable[Sequence[uuid.UUID]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


__all__ = [
    "DEFAULT_BANDIT_WINDOW_S",
    "ArmInput",
    "ExperimentInput",
    "attribution_windows",
    "PeriodCounts",
    "RollupCounts",
    "chunks",
    "load_inputs",
    "running_experiment_ids",
]

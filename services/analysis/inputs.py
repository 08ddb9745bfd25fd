"""Load what SIRA computes on: per-arm counts from the rollups and the assignments.

Everything SIRA shows is a function of three small reads, none of which touches
raw events:

* ``experiment_variant_rollups``: per (variant, event type) events, distinct users
  and value sums, maintained by the ingestion worker;
* the number of users *assigned* to each variant (one ``GROUP BY`` on the indexed
  ``experiment_assignments.variant_id``): the denominator of every rate, so that a
  user who never comes back counts as a failure;
* the experiment and variant rows themselves.

When an experiment's split changed during its life (a bandit republishing its
weights, a pause, a restart: each opens an *allocation period*, recorded on every
assignment row) or when its metrics have attribution windows, SIRA needs counts
per period and per window, which the rollups do not hold: two more reads then give
users per (variant, period) from the assignments index and successes per (variant,
period, event type) from the per-user rollups joined to the assignments (cost
linear in the users with events, never in the events).  A fixed split that never
changed and has no windows is served from the rollups alone, exactly as before.

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
from sqlalchemy import Double, String, bindparam, literal, select, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from models import Experiment, Variant
from models.enums import DEFAULT_GUARDRAILS, EVENT_TYPES, LOWER_IS_BETTER, ExperimentMode, ExperimentStatus
from sira.bandit import BanditConfig
from sira.failfast import DEFAULT_FAIL_FAST_ACTION, DEFAULT_GUARDRAIL_ACTION, DEFAULT_GUARDRAIL_MARGIN, FailFastConfig
from sira.stats import ProportionStats, SampleStats
from sira.strata import PeriodTable

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
class PeriodCounts:
    """Per (allocation period, arm) counts, periods in chronological order.

    ``users`` all users so far; ``matured`` per event type the users whose attribution
    window has closed; ``successes`` / ``matured_successes`` per event type the users
    among them with an event inside the window; ``probability`` the logged probability
    of the arm in the period (NaN where no row says, e.g. the arm got nobody).
    """

    ids: tuple[int, ...]
    users: np.ndarray
    probability: np.ndarray
    matured: dict[str, np.ndarray]
    successes: dict[str, np.ndarray]
    matured_successes: dict[str, np.ndarray]


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


# Users per (variant, period) from the assignments index alone, and for each window
# the users assigned long enough ago for it to have closed (NULL seconds: all users).
_PERIOD_USERS = text(
    """
    SELECT a.variant_id, a.period, w.seconds, min(a.probability) AS probability,
           count(*) FILTER (WHERE w.seconds IS NULL
                            OR a.assigned_at <= CAST(:now AS timestamptz) - make_interval(secs => w.seconds)) AS users
    FROM unnest(:w_variants, :w_seconds) AS w(variant_id, seconds)
    JOIN experiment_assignments a ON a.variant_id = w.variant_id
    GROUP BY a.variant_id, a.period, w.seconds
    """
).bindparams(
    bindparam("w_variants", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("w_seconds", type_=ARRAY(Double)),
)

# Successes per (variant, period, event type): users with an event of the type inside
# their window, among all users and among users whose window has closed.
_PERIOD_SUCCESSES = text(
    """
    SELECT a.variant_id, a.period, u.event_type,
           count(*) FILTER (WHERE w.seconds IS NULL
                            OR u.first_event_at <= a.assigned_at + make_interval(secs => w.seconds)) AS successes,
           count(*) FILTER (WHERE w.seconds IS NULL
                            OR (u.first_event_at <= a.assigned_at + make_interval(secs => w.seconds)
                                AND a.assigned_at <= CAST(:now AS timestamptz) - make_interval(secs => w.seconds))
           ) AS matured_successes
    FROM experiment_user_rollups u
    JOIN experiment_assignments a ON a.experiment_id = u.experiment_id AND a.molam_id = u.molam_id
    LEFT JOIN unnest(:w_experiments, :w_types, :w_seconds) AS w(experiment_id, event_type, seconds)
           ON w.experiment_id = u.experiment_id AND w.event_type = u.event_type
    WHERE u.experiment_id = ANY(:experiment_ids)
    GROUP BY a.variant_id, a.period, u.event_type
    """
).bindparams(
    bindparam("experiment_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("w_experiments", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("w_types", type_=ARRAY(String)),
    bindparam("w_seconds", type_=ARRAY(Double)),
)


def _load_period_counts(
    session: Session, experiments: list[ExperimentInput], now: datetime
) -> dict[uuid.UUID, dict[str, Any]]:
    """Period ids, users and probabilities of every experiment, and per-period successes
    where they are needed (several periods or an attribution window)."""
    result: dict[uuid.UUID, dict[str, Any]] = {}
    if not experiments:
        return result
    w_variants, w_seconds = [], []
    for experiment in experiments:
        windows = sorted({w for w in experiment.windows.values() if w is not None})
        for arm in experiment.arms:
            for seconds in [None, *windows]:
                w_variants.append(arm.variant_id)
                w_seconds.append(None if seconds is None else float(seconds))
    # (variant, period) -> {seconds: users}, probability
    users: dict[tuple[uuid.UUID, int], dict[float | None, int]] = {}
    probability: dict[tuple[uuid.UUID, int], float | None] = {}
    if w_variants:
        rows = session.execute(_PERIOD_USERS, {"w_variants": w_variants, "w_seconds": w_seconds, "now": now})
        for row in rows:
            key = (row.variant_id, int(row.period))
            users.setdefault(key, {})[row.seconds] = int(row.users)
            if row.probability is not None:
                probability[key] = float(row.probability)
    stratified = []
    for experiment in experiments:
        variant_ids = {arm.variant_id for arm in experiment.arms}
        ids = tuple(sorted({period for variant, period in users if variant in variant_ids}))
        shape = (len(ids), len(experiment.arms))
        period_users = np.zeros(shape)
        period_probability = np.full(shape, np.nan)
        for k, period in enumerate(ids):
            for a, arm in enumerate(experiment.arms):
                period_users[k, a] = users.get((arm.variant_id, period), {}).get(None, 0)
                period_probability[k, a] = probability.get((arm.variant_id, period), np.nan)
        result[experiment.id] = {
            "period_ids": ids,
            "period_users": period_users,
            "period_probability": period_probability,
            "period_counts": None,
        }
        if len(ids) > 1 or any(w is not None for w in experiment.windows.values()):
            stratified.append(experiment)
    if not stratified:
        return result

    w_experiments, w_types, w_type_seconds = [], [], []
    for experiment in stratified:
        for event_type, seconds in experiment.windows.items():
            if seconds is not None:
                w_experiments.append(experiment.id)
                w_types.append(event_type)
                w_type_seconds.append(float(seconds))
    successes: dict[tuple[uuid.UUID, int, str], tuple[int, int]] = {}
    rows = session.execute(
        _PERIOD_SUCCESSES,
        {
            "experiment_ids": [e.id for e in stratified],
            "w_experiments": w_experiments,
            "w_types": w_types,
            "w_seconds": w_type_seconds,
            "now": now,
        },
    )
    for row in rows:
        successes[(row.variant_id, int(row.period), row.event_type)] = (int(row.successes), int(row.matured_successes))

    for experiment in stratified:
        ids = result[experiment.id]["period_ids"] or (0,)
        shape = (len(ids), len(experiment.arms))
        all_users = np.zeros(shape)
        arm_probability = np.full(shape, np.nan)
        matured = {event_type: np.zeros(shape) for event_type in EVENT_TYPES}
        wins = {event_type: np.zeros(shape) for event_type in EVENT_TYPES}
        matured_wins = {event_type: np.zeros(shape) for event_type in EVENT_TYPES}
        for k, period in enumerate(ids):
            for a, arm in enumerate(experiment.arms):
                by_window = users.get((arm.variant_id, period), {})
                all_users[k, a] = by_window.get(None, 0)
                arm_probability[k, a] = probability.get((arm.variant_id, period), np.nan)
                for event_type, seconds in experiment.windows.items():
                    matured[event_type][k, a] = by_window.get(None if seconds is None else float(seconds), 0)
                    s, m = successes.get((arm.variant_id, period, event_type), (0, 0))
                    # Assignments committed between the two reads can make a cell's
                    # successes exceed its users by a few; the later table is clamped.
                    wins[event_type][k, a] = min(s, all_users[k, a])
                    matured_wins[event_type][k, a] = min(m, matured[event_type][k, a])
        result[experiment.id]["period_counts"] = PeriodCounts(
            ids, all_users, arm_probability, matured, wins, matured_wins
        )
    return result


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
    variant_ids = [row.id for row in variants]

    rollups: dict[uuid.UUID, dict[str, RollupCounts]] = {}
    for row in session.execute(_ROLLUPS, {"experiment_ids": list(experiment_ids)}):
        rollups.setdefault(row.variant_id, {})[row.event_type] = RollupCounts(
            events=int(row.events),
            users=int(row.users),
            value_count=int(row.value_count),
            value_sum=float(row.value_sum),
            value_sum_squares=float(row.value_sum_squares),
            user_value_sum_squares=float(row.user_value_sum_squares),
        )
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
    periods = _load_period_counts(session, list(by_id.values()), now or datetime.now(timezone.utc))
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

"""The domain's closed vocabularies, in one place.

Stored in PostgreSQL as plain text guarded by CHECK constraints (enums by value),
so adding a value is a one-line migration rather than an ``ALTER TYPE``.
"""
from __future__ import annotations

import enum


class ExperimentStatus(str, enum.Enum):
    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"
    ARCHIVED = "archived"


class ExperimentMode(str, enum.Enum):
    AB = "ab"
    BANDIT = "bandit"


class EventType(str, enum.Enum):
    CONVERSION = "conversion"
    REFUND = "refund"
    CHURN = "churn"
    FRAUD_ALERT = "fraud_alert"
    CLICK = "click"
    VIEW = "view"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)
# Event types where a higher rate is worse: SIRA counts users WITHOUT the event as
# successes when one of these is the primary metric, and P(beat control) means a lower rate.
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {EventType.REFUND.value, EventType.CHURN.value, EventType.FRAUD_ALERT.value}
)
STATUSES: tuple[str, ...] = tuple(s.value for s in ExperimentStatus)
MODES: tuple[str, ...] = tuple(m.value for m in ExperimentMode)

FAIL_FAST_RULES = ("sequential", "bayesian")
FAIL_FAST_ACTIONS = ("recommend", "pause_variant", "stop_experiment")
GUARDRAIL_ACTIONS = ("recommend", "pause_variant", "stop_experiment")
DEFAULT_GUARDRAILS = ("fraud_alert", "refund")

APPROVAL_STATUSES = ("pending", "approved", "rejected", "invalidated")
SCHEDULE_ACTIONS = ("start", "stop")
#: Experiments in these categories always need four-eyes approval to start.
APPROVAL_CATEGORIES = frozenset({"pricing"})

TARGETING_LIST_KEYS = ("country", "lang", "currency", "region", "device")
TARGETING_KEYS = TARGETING_LIST_KEYS + ("min_txn",)


def sql_in(values: tuple[str, ...]) -> str:
    """Render a CHECK constraint's ``IN (...)`` list."""
    return ", ".join(f"'{v}'" for v in values)

"""SQLAlchemy models: the PostgreSQL schema is the source of truth."""
from .audit import AuditEntry
from .base import Base
from .experiments import Assignment, Experiment, Variant
from .metrics import DeadLetter, MetricEvent, UserRollup, VariantRollup
from .money import FxRate, UserMoneyRollup
from .sira import BanditHistory, BanditState, Recommendation, Report

__all__ = [
    "Assignment",
    "AuditEntry",
    "BanditHistory",
    "BanditState",
    "Base",
    "DeadLetter",
    "Experiment",
    "FxRate",
    "MetricEvent",
    "Recommendation",
    "Report",
    "UserMoneyRollup",
    "UserRollup",
    "Variant",
]

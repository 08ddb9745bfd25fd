"""SQLAlchemy models: the PostgreSQL schema is the source of truth."""
from .audit import APPEND_ONLY_TABLES, AuditCheckpoint, AuditEntry, AuditLegacyBoundary, AuditVerifyJob
from .base import Base
from .design import ApprovalRequest, ExperimentHoldout, Holdout, HoldoutEvent, HoldoutMember, Layer, ScheduleAttempt
from .experiments import Assignment, Experiment, Variant
from .metrics import DeadLetter, MetricEvent, UserRollup, VariantRollup
from .money import FxRate, UserMoneyRollup
from .sira import BanditHistory, BanditState, Recommendation, Report

__all__ = [
    "APPEND_ONLY_TABLES",
    "ApprovalRequest",
    "Assignment",
    "AuditCheckpoint",
    "AuditEntry",
    "AuditLegacyBoundary",
    "AuditVerifyJob",
    "BanditHistory",
    "BanditState",
    "Base",
    "DeadLetter",
    "Experiment",
    "ExperimentHoldout",
    "FxRate",
    "Holdout",
    "HoldoutEvent",
    "HoldoutMember",
    "Layer",
    "MetricEvent",
    "Recommendation",
    "Report",
    "ScheduleAttempt",
    "UserMoneyRollup",
    "UserRollup",
    "Variant",
    "VariantRollup",
]

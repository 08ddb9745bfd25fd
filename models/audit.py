from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, created_at_column, uuid_pk

#: Tables the application role may only read and append to (SELECT, INSERT): the grants
#: (``scripts/db_roles.py``) and the migration that revokes the rest read this list.
APPEND_ONLY_TABLES = ("experiment_audit_logs", "experiment_audit_checkpoints", "experiment_audit_legacy_boundary")


class AuditEntry(Base):
    """Append-only, HMAC-chained record of every mutation.

    No foreign key to ``experiments``: the entry that records a deletion must
    outlive the row it describes. A trigger rejects UPDATE, DELETE and TRUNCATE,
    and the application role holds only SELECT and INSERT. ``prev_hash`` is unique:
    two entries can never claim the same predecessor, so the chain cannot fork.
    ``key_id`` names the HMAC key of ``hash``; ``NULL`` marks an entry written before
    the switch to HMAC (plain SHA-256, see :class:`AuditLegacyBoundary`).
    """

    __tablename__ = "experiment_audit_logs"
    __table_args__ = (Index("ix_experiment_audit_logs_experiment_id_id", "experiment_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    experiment_id: Mapped[uuid.UUID | None]
    actor: Mapped[str] = mapped_column(String(200))
    actor_roles: Mapped[list[str]] = mapped_column(ARRAY(Text))
    action: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    request_id: Mapped[str | None] = mapped_column(String(128))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str | None] = mapped_column(String(32))


class AuditLegacyBoundary(Base):
    """The switch-over point to the HMAC chain, recorded once by the migration that made it.

    Entries with ``id <= last_legacy_id`` were written with plain SHA-256 and verify under
    that rule (reported as ``legacy``); every later entry must carry an HMAC. No row means
    the chain has no legacy entries.
    """

    __tablename__ = "experiment_audit_legacy_boundary"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_legacy_id: Mapped[int] = mapped_column(BigInteger)
    last_legacy_hash: Mapped[str] = mapped_column(String(64))
    entries: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime] = created_at_column()


class AuditCheckpoint(Base):
    """A signed statement of the chain head: entry ``entry_id`` has ``entry_hash`` and is the
    ``entries``-th entry. ``signature`` is an HMAC with key ``key_id`` over the other fields
    (:func:`services.experiments.audit_checks.checkpoint_message`)."""

    __tablename__ = "experiment_audit_checkpoints"
    __table_args__ = (UniqueConstraint("entry_id", name="uq_experiment_audit_checkpoints_entry_id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    entry_id: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))
    entries: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(64))


class AuditVerifyJob(Base):
    """A complete verification of the chain run by the worker (``GET /api/audit/verify?full=1``)."""

    __tablename__ = "experiment_audit_verify_jobs"

    id: Mapped[uuid.UUID] = uuid_pk()
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)

"""Audit chain tasks: signed checkpoints of the head (beat) and full verifications (on demand)."""
from __future__ import annotations

import uuid
from typing import Any

from celery import shared_task

from core import db
from services.analysis import jobs
from services.experiments import audit, audit_checks

CHECKPOINT_JOB = "audit.write_checkpoint"


@shared_task(name=CHECKPOINT_JOB)
def write_checkpoint() -> dict[str, Any]:
    """Verify the chain since the last checkpoint and sign its head (nothing when it did not move)."""
    with jobs.job_lock(CHECKPOINT_JOB) as acquired:
        if not acquired:
            return {"skipped": "another run holds the lock"}
        with db.session_scope() as session:
            return audit_checks.write_checkpoint(session, audit.current_keys()).as_dict()


@shared_task(name="audit.verify_full")
def verify_full(job_id: str) -> dict[str, Any]:
    """Walk the whole chain and every checkpoint for a job queued by ``GET /api/audit/verify?full=1``."""
    return audit_checks.run_verify_job(db.new_session, audit.current_keys(), uuid.UUID(job_id))

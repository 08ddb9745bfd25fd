"""Verifying the audit chain, and signed checkpoints of its head.

Verification rule, per entry in id order:

- ``prev_hash`` equals the previous entry's ``hash`` (the first entry's is ``GENESIS_HASH``);
- an entry with a ``key_id`` must carry ``HMAC-SHA256(key[key_id], canonical entry)``;
- an entry without one (plain SHA-256, written before the switch to HMAC) is accepted only
  while its id is at most the switch-over point the migration recorded
  (``experiment_audit_legacy_boundary``), and only as an unbroken prefix of the chain: such
  entries are reported as ``legacy_entries``. A SHA-256 entry inserted later, by anyone,
  does not verify.

A checkpoint signs (entry id, entry hash, number of entries up to it, time, key id) with
the same key. The incremental verification starts from the newest checkpoint, once its
signature verifies and its entry still has the signed hash and position (a checkpoint that
fails either is reported, never skipped), and re-checks only the entries after it; the full
verification walks every entry and checks every checkpoint against the chain.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import AuditCheckpoint, AuditEntry, AuditLegacyBoundary, AuditVerifyJob

from .audit import GENESIS_HASH, AuditKeys, canonical_payload, legacy_hash

log = logging.getLogger(__name__)

_ENTRY_COLUMNS = (
    AuditEntry.id, AuditEntry.experiment_id, AuditEntry.actor, AuditEntry.actor_roles, AuditEntry.action,
    AuditEntry.before, AuditEntry.after, AuditEntry.request_id, AuditEntry.client_ip, AuditEntry.created_at,
    AuditEntry.prev_hash, AuditEntry.hash, AuditEntry.key_id,
)


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    #: Entries up to the head when ok; the position the walk reached otherwise.
    entries: int
    first_bad_id: int | None
    reason: str | None = None
    mode: str = "incremental"
    #: Entries whose hash this run recomputed (after the starting checkpoint).
    verified_entries: int = 0
    #: Entries accepted under the pre-HMAC SHA-256 rule (up to ``legacy_through_id``).
    legacy_entries: int = 0
    legacy_through_id: int | None = None
    #: The checkpoint the walk started from (``None``: from the genesis).
    from_checkpoint: dict[str, Any] | None = None
    head_id: int | None = None
    head_hash: str | None = None
    #: Full runs: checkpoints whose signature and position were checked.
    checkpoints_verified: int | None = None
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The fields of a checkpoint its signature covers, as exported by ``GET /api/audit/checkpoints``.
SIGNED_FIELDS = ("entry_id", "entry_hash", "entries", "created_at", "key_id")


def checkpoint_message(entry_id: int, entry_hash: str, entries: int, created_at: datetime, key_id: str) -> str:
    """What a checkpoint's signature covers (also how an auditor recomputes it)."""
    document = {
        "entry_id": entry_id,
        "entry_hash": entry_hash,
        "entries": entries,
        "created_at": created_at.astimezone(timezone.utc).isoformat(timespec="microseconds"),
        "key_id": key_id,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def document_signature_ok(keys: AuditKeys, document: dict[str, Any]) -> bool:
    """An exported checkpoint's signature, recomputed from the exported fields alone."""
    message = json.dumps({k: document[k] for k in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":"))
    expected = keys.mac(document["key_id"], message)
    return expected is not None and hmac.compare_digest(expected, document["signature"])


def checkpoint_signature_ok(keys: AuditKeys, checkpoint: AuditCheckpoint) -> bool:
    expected = keys.mac(
        checkpoint.key_id,
        checkpoint_message(checkpoint.entry_id, checkpoint.entry_hash, checkpoint.entries, checkpoint.created_at, checkpoint.key_id),
    )
    return expected is not None and hmac.compare_digest(expected, checkpoint.signature)


def checkpoint_document(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "id": checkpoint.id,
        "entry_id": checkpoint.entry_id,
        "entry_hash": checkpoint.entry_hash,
        "entries": checkpoint.entries,
        "created_at": checkpoint.created_at.astimezone(timezone.utc).isoformat(timespec="microseconds"),
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def _legacy_boundary(session: Session) -> AuditLegacyBoundary | None:
    return session.get(AuditLegacyBoundary, 1)


def _expected_hash(row: Any, keys: AuditKeys) -> str | None:
    canonical = canonical_payload(
        experiment_id=row.experiment_id, actor=row.actor, actor_roles=row.actor_roles, action=row.action,
        before=row.before, after=row.after, request_id=row.request_id, client_ip=row.client_ip,
        created_at=row.created_at, prev_hash=row.prev_hash, key_id=row.key_id,
    )
    if row.key_id is None:
        return legacy_hash(canonical)
    return keys.mac(row.key_id, canonical)


@dataclass
class _Walk:
    """State of one walk over part of the chain."""

    expected_prev: str
    position: int
    legacy_allowed_through: int | None
    legacy_entries: int = 0
    verified: int = 0
    positions: dict[int, tuple[int, str]] = field(default_factory=dict)


def _walk(
    session: Session, keys: AuditKeys, walk: _Walk, after_id: int, through_id: int, remember: set[int], batch_size: int
) -> tuple[int | None, str | None]:
    """Check every entry with ``after_id < id <= through_id``; returns (first bad id, reason) or (None, None)."""
    rows = session.execute(
        select(*_ENTRY_COLUMNS)
        .where(AuditEntry.id > after_id, AuditEntry.id <= through_id)
        .order_by(AuditEntry.id)
        .execution_options(yield_per=batch_size)
    )
    for row in rows:
        walk.position += 1
        walk.verified += 1
        if row.prev_hash != walk.expected_prev:
            return row.id, "prev_hash does not match the previous entry"
        if row.key_id is None:
            if walk.legacy_allowed_through is None or row.id > walk.legacy_allowed_through:
                return row.id, "entry has no HMAC (plain SHA-256) after the switch to the HMAC chain"
            walk.legacy_entries += 1
        else:
            walk.legacy_allowed_through = None  # legacy entries only ever form a prefix
        expected = _expected_hash(row, keys)
        if expected is None:
            return row.id, f"entry is signed with an unknown key id {row.key_id!r}"
        if not hmac.compare_digest(expected, row.hash):
            return row.id, "hash does not match the entry's content"
        walk.expected_prev = row.hash
        if row.id in remember:
            walk.positions[row.id] = (walk.position, row.hash)
    return None, None


def _head(session: Session) -> tuple[int | None, str | None]:
    row = session.execute(select(AuditEntry.id, AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row is not None else (None, None)


def _entries_through(session: Session, entry_id: int) -> int:
    """Entries with id <= ``entry_id`` (an index-only scan of the primary key)."""
    return session.execute(select(func.count()).select_from(AuditEntry).where(AuditEntry.id <= entry_id)).scalar_one()


def verify_chain(session: Session, keys: AuditKeys, *, full: bool = False, batch_size: int = 5000) -> ChainVerification:
    """Verify the chain up to its current head.

    Incremental (default): start from the newest checkpoint, after checking its signature
    and that its entry still has the signed hash and position (so a deleted or inserted
    entry before it shows); re-check only the entries after it. Full: walk every entry
    from the genesis, then check every checkpoint's signature and that it matches the
    entry at its position.

    Entries commit in chain order (the chain lock is held until COMMIT), so bounding the
    walk by the head read first gives a consistent answer under concurrent writes.
    """
    started = time.perf_counter()
    mode = "full" if full else "incremental"
    head_id, head_hash = _head(session)
    boundary = _legacy_boundary(session)
    walk = _Walk(GENESIS_HASH, 0, boundary.last_legacy_id if boundary else None)
    start: AuditCheckpoint | None = None

    def result(ok: bool, first_bad_id: int | None = None, reason: str | None = None, **extra: Any) -> ChainVerification:
        legacy = walk.legacy_entries
        if start is not None and boundary is not None and start.entry_id >= boundary.last_legacy_id:
            legacy = boundary.entries  # the checkpoint vouches for the legacy prefix
        return ChainVerification(
            ok, walk.position, first_bad_id, reason,
            mode=mode, verified_entries=walk.verified, legacy_entries=legacy,
            legacy_through_id=boundary.last_legacy_id if boundary is not None and legacy else None,
            from_checkpoint=checkpoint_document(start) if start is not None else None,
            head_id=head_id, head_hash=head_hash, duration_ms=round((time.perf_counter() - started) * 1000, 2), **extra,
        )

    query = select(AuditCheckpoint).order_by(AuditCheckpoint.entry_id.desc())
    checkpoints = list(session.scalars(query if full else query.limit(1)))
    for checkpoint in checkpoints:
        if not checkpoint_signature_ok(keys, checkpoint):
            return result(False, checkpoint.entry_id, f"checkpoint {checkpoint.id} has an invalid signature")
    if head_id is None:
        if checkpoints:
            return result(False, checkpoints[0].entry_id, "the chain is empty but checkpoints exist")
        return result(True, checkpoints_verified=0 if full else None)
    after_id = 0
    if not full and checkpoints:
        newest = checkpoints[0]
        entry_hash = session.execute(select(AuditEntry.hash).where(AuditEntry.id == newest.entry_id)).scalar_one_or_none()
        if entry_hash != newest.entry_hash or _entries_through(session, newest.entry_id) != newest.entries:
            return result(
                False, newest.entry_id,
                f"the chain up to entry {newest.entry_id} is not what checkpoint {newest.id} signed "
                "(a full verification finds the first changed entry)",
            )
        start = newest
        walk.expected_prev, walk.position, after_id = newest.entry_hash, newest.entries, newest.entry_id
        if boundary is not None and newest.entry_id >= boundary.last_legacy_id:
            walk.legacy_allowed_through = None
    remember = {c.entry_id for c in checkpoints} if full else set()
    bad_id, reason = _walk(session, keys, walk, after_id, head_id, remember, batch_size)
    if bad_id is not None:
        return result(False, bad_id, reason, checkpoints_verified=0 if full else None)
    if not full:
        return result(True)
    for checkpoint in checkpoints:
        if walk.positions.get(checkpoint.entry_id) != (checkpoint.entries, checkpoint.entry_hash):
            return result(False, checkpoint.entry_id, f"checkpoint {checkpoint.id} does not match the chain", checkpoints_verified=0)
    return result(True, checkpoints_verified=len(checkpoints))


def compare_held_checkpoints(session: Session, keys: AuditKeys | None, held: list[dict[str, Any]]) -> list[str]:
    """What differs between checkpoints an auditor exported earlier and the platform now.

    Each held checkpoint must still be stored unchanged, its entry must still have the signed
    hash and position, and positions only grow; with ``keys``, each signature is recomputed
    from the held copy. Returns one line per problem (empty: everything held still matches).
    """
    problems: list[str] = []
    previous: dict[str, Any] | None = None
    for document in sorted(held, key=lambda d: d["id"]):
        label = f"checkpoint {document['id']} (entry {document['entry_id']})"
        if keys is not None and not document_signature_ok(keys, document):
            problems.append(f"{label}: the held copy's signature does not verify")
        stored = session.get(AuditCheckpoint, document["id"])
        if stored is None:
            problems.append(f"{label}: no longer stored by the platform")
        elif checkpoint_document(stored) != document:
            problems.append(f"{label}: the platform's copy differs from the held one")
        entry_hash = session.execute(select(AuditEntry.hash).where(AuditEntry.id == document["entry_id"])).scalar_one_or_none()
        if entry_hash is None:
            problems.append(f"{label}: entry {document['entry_id']} is missing")
        elif entry_hash != document["entry_hash"]:
            problems.append(f"{label}: entry {document['entry_id']} has another hash")
        if _entries_through(session, document["entry_id"]) != document["entries"]:
            problems.append(f"{label}: the number of entries up to it changed")
        if previous is not None and (document["entries"] < previous["entries"] or document["entry_id"] < previous["entry_id"]):
            problems.append(f"{label}: goes backwards from checkpoint {previous['id']}")
        previous = document
    return problems


@dataclass(frozen=True)
class CheckpointOutcome:
    written: bool
    reason: str
    checkpoint: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_checkpoint(session: Session, keys: AuditKeys) -> CheckpointOutcome:
    """Sign the current head, after verifying the chain up to it from the last checkpoint.

    Nothing is signed when the chain does not verify (a signature must never vouch for a
    tampered history) or when the head has not moved since the last checkpoint.
    """
    verification = verify_chain(session, keys)
    if not verification.ok:
        log.error("audit chain does not verify (%s at entry %s): no checkpoint written",
                  verification.reason, verification.first_bad_id)
        return CheckpointOutcome(False, f"chain does not verify: {verification.reason}")
    if verification.head_id is None or verification.head_hash is None:
        return CheckpointOutcome(False, "the chain is empty")
    if verification.from_checkpoint and verification.from_checkpoint["entry_id"] == verification.head_id:
        return CheckpointOutcome(False, "the head has not moved since the last checkpoint")
    created_at = datetime.now(timezone.utc)
    message = checkpoint_message(verification.head_id, verification.head_hash, verification.entries, created_at, keys.current_id)
    checkpoint_id = session.execute(
        pg_insert(AuditCheckpoint)
        .values(
            entry_id=verification.head_id, entry_hash=verification.head_hash, entries=verification.entries,
            created_at=created_at, key_id=keys.current_id, signature=keys.sign(message),
        )
        .on_conflict_do_nothing(constraint="uq_experiment_audit_checkpoints_entry_id")
        .returning(AuditCheckpoint.id)
    ).scalar_one_or_none()
    if checkpoint_id is None:
        return CheckpointOutcome(False, "another run signed this head first")
    return CheckpointOutcome(True, "signed", checkpoint_document(session.get_one(AuditCheckpoint, checkpoint_id)))


def create_verify_job(session: Session, requested_by: str) -> AuditVerifyJob:
    job = AuditVerifyJob(requested_by=requested_by, status="queued")
    session.add(job)
    session.flush()
    return job


def fail_verify_job(session: Session, job: AuditVerifyJob, error: str) -> None:
    job.status, job.error, job.finished_at = "failed", error, datetime.now(timezone.utc)
    session.flush()


def get_verify_job(session: Session, job_id: uuid.UUID) -> AuditVerifyJob | None:
    return session.get(AuditVerifyJob, job_id)


def run_verify_job(session_factory: Any, keys: AuditKeys, job_id: uuid.UUID) -> dict[str, Any]:
    """Run a queued full verification and store its result (a finished job is left as it is)."""
    with session_factory() as session:
        job = session.get(AuditVerifyJob, job_id, with_for_update=True)
        if job is None:
            return {"job_id": str(job_id), "status": "missing"}
        if job.status in ("done", "failed"):
            return {"job_id": str(job_id), "status": job.status}
        job.status, job.started_at = "running", datetime.now(timezone.utc)
        session.commit()
    try:
        with session_factory() as session:
            verification = verify_chain(session, keys, full=True)
    except Exception as exc:
        with session_factory() as session:
            fail_verify_job(session, session.get_one(AuditVerifyJob, job_id), str(exc))
            session.commit()
        raise
    with session_factory() as session:
        job = session.get_one(AuditVerifyJob, job_id)
        job.status, job.result, job.finished_at = "done", verification.as_dict(), datetime.now(timezone.utc)
        session.commit()
    return {"job_id": str(job_id), "status": "done", "ok": verification.ok}

"""Append-only, hash-chained audit log.

Each entry stores the previous entry's hash and its own hash over a canonical
serialisation (sorted-key compact JSON of every recorded field plus ``prev_hash``).
Writers take a transaction-scoped advisory lock so the chain stays linear under
concurrency; the entry is written in the caller's transaction, so a mutation and
its audit entry commit or roll back together.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models import AuditEntry

GENESIS_HASH = "0" * 64
_CHAIN_LOCK_KEY = 147_000_001


@dataclass(frozen=True)
class Actor:
    sub: str
    roles: tuple[str, ...]
    request_id: str | None = None
    client_ip: str | None = None


SIRA_ACTOR = Actor(sub="sira", roles=("sira",))


def canonical_payload(
    *,
    experiment_id: uuid.UUID | str | None,
    actor: str,
    actor_roles: list[str] | tuple[str, ...],
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    request_id: str | None,
    client_ip: str | None,
    created_at: datetime,
    prev_hash: str,
) -> str:
    document = {
        "experiment_id": str(experiment_id) if experiment_id is not None else None,
        "actor": actor,
        "actor_roles": list(actor_roles),
        "action": action,
        "before": before,
        "after": after,
        "request_id": request_id,
        "client_ip": client_ip,
        "created_at": created_at.astimezone(timezone.utc).isoformat(timespec="microseconds"),
        "prev_hash": prev_hash,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_entry(entry: AuditEntry) -> str:
    return canonical_payload(
        experiment_id=entry.experiment_id,
        actor=entry.actor,
        actor_roles=entry.actor_roles,
        action=entry.action,
        before=entry.before,
        after=entry.after,
        request_id=entry.request_id,
        client_ip=entry.client_ip,
        created_at=entry.created_at,
        prev_hash=entry.prev_hash,
    )


def entry_hash(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()


def _jsonable(document: dict[str, Any] | None) -> dict[str, Any] | None:
    """Round-trip through JSON so what we hash is exactly what JSONB gives back."""
    if document is None:
        return None
    return json.loads(json.dumps(document, default=str))


def record(
    session: Session,
    *,
    actor: Actor,
    action: str,
    experiment_id: uuid.UUID | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})
    prev_hash = session.execute(
        select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)
    ).scalar_one_or_none() or GENESIS_HASH
    entry = AuditEntry(
        experiment_id=experiment_id,
        actor=actor.sub,
        actor_roles=list(actor.roles),
        action=action,
        before=_jsonable(before),
        after=_jsonable(after),
        request_id=actor.request_id,
        client_ip=actor.client_ip,
        created_at=datetime.now(timezone.utc),
        prev_hash=prev_hash,
    )
    entry.hash = entry_hash(canonical_entry(entry))
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    entries: int
    first_bad_id: int | None
    reason: str | None = None


def verify_chain(session: Session, batch_size: int = 2000) -> ChainVerification:
    """Walk the whole chain in id order, recomputing every hash and link."""
    expected_prev = GENESIS_HASH
    count = 0
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.id).execution_options(yield_per=batch_size))
    for entry in rows.scalars():
        count += 1
        if entry.prev_hash != expected_prev:
            return ChainVerification(False, count, entry.id, "prev_hash does not match the previous entry")
        if entry_hash(canonical_entry(entry)) != entry.hash:
            return ChainVerification(False, count, entry.id, "hash does not match the entry's content")
        expected_prev = entry.hash
    return ChainVerification(True, count, None)

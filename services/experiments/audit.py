"""Append-only, HMAC-chained audit log.

Each entry stores the previous entry's hash and its own hash: an HMAC-SHA256, keyed by
``AUDIT_HMAC_KEY``, over a canonical serialisation (sorted-key compact JSON of every
recorded field plus ``prev_hash`` and ``key_id``). The key never reaches the database,
so someone who can write rows (even a superuser who disables the triggers) cannot
produce an entry that verifies. Entries written before the switch to HMAC carry no
``key_id`` and a plain SHA-256 hash; they verify under that rule only up to the
recorded switch-over point (:mod:`.audit_checks`).

Lock order. A mutation locks its rows first (``SELECT … FOR UPDATE`` on the experiment)
and the chain last: :func:`record` only queues the entry on the session, and the entries
are chained and inserted just before COMMIT, under a transaction-scoped advisory lock.
No code path can therefore hold the chain lock while waiting for a row, and the lock is
held for the shortest possible time. The entry still commits or rolls back with the
mutation it describes: it is written in the same transaction.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session, SessionTransaction

from core.config import Settings
from models import AuditEntry

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
_CHAIN_LOCK_KEY = 147_000_001
#: ``session.info`` key of the entries waiting for COMMIT.
_PENDING = "audit_pending_entries"
DEV_KEY_ID = "dev"
DEV_KEY_FILE = "audit-hmac.key"


@dataclass(frozen=True)
class Actor:
    sub: str
    roles: tuple[str, ...]
    request_id: str | None = None
    client_ip: str | None = None


SIRA_ACTOR = Actor(sub="sira", roles=("sira",))


@dataclass(frozen=True)
class AuditKeys:
    """The HMAC keys of this process: ``current_id`` signs, every key in ``keys`` verifies."""

    current_id: str
    keys: dict[str, bytes] = field(repr=False)

    def mac(self, key_id: str, message: str) -> str | None:
        """HMAC-SHA256 of ``message`` with key ``key_id`` (hex); ``None`` for an unknown key."""
        key = self.keys.get(key_id)
        if key is None:
            return None
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, message: str) -> str:
        return self.mac(self.current_id, message)  # type: ignore[return-value]


def parse_previous_keys(raw: str | None) -> dict[str, bytes]:
    """``"k0:secret,k-1:older"`` → ``{"k0": b"secret", "k-1": b"older"}``."""
    keys: dict[str, bytes] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        key_id, separator, secret = item.strip().partition(":")
        if not separator or not key_id or not secret:
            raise ValueError("AUDIT_HMAC_PREVIOUS_KEYS must be a comma-separated list of key_id:key")
        keys[key_id] = secret.encode()
    return keys


def keys_from_settings(settings: Settings) -> AuditKeys:
    """The configured key, or outside production a development key kept under ``dev_key_dir``.

    The development key is generated once and reused by every process that shares the
    directory (API, worker, beat), so entries written by one verify in the others.
    """
    previous = parse_previous_keys(settings.audit_hmac_previous_keys)
    if settings.audit_hmac_key:
        return AuditKeys(settings.audit_hmac_key_id, {**previous, settings.audit_hmac_key_id: settings.audit_hmac_key.encode()})
    if settings.is_production:
        raise RuntimeError("AUDIT_HMAC_KEY is required in production")
    path = settings.dev_key_dir / DEV_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    log.warning(
        "AUDIT_HMAC_KEY is not set: the audit chain is signed with the development key in %s "
        "(set AUDIT_HMAC_KEY outside development)", path,
    )
    return AuditKeys(DEV_KEY_ID, {**previous, DEV_KEY_ID: path.read_text().strip().encode()})


_keys: AuditKeys | None = None


def configure_keys(keys: AuditKeys) -> None:
    """Install this process's keys (app factory, worker start)."""
    global _keys
    _keys = keys


def current_keys() -> AuditKeys:
    if _keys is None:
        raise RuntimeError("audit keys not configured; call configure_keys first")
    return _keys


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


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
    key_id: str | None = None,
) -> str:
    """What an entry's hash covers. Legacy entries (``key_id`` None) omit the key id, as they always did."""
    document = {
        "experiment_id": str(experiment_id) if experiment_id is not None else None,
        "actor": actor,
        "actor_roles": list(actor_roles),
        "action": action,
        "before": before,
        "after": after,
        "request_id": request_id,
        "client_ip": client_ip,
        "created_at": _iso(created_at),
        "prev_hash": prev_hash,
    }
    if key_id is not None:
        document["key_id"] = key_id
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
        key_id=entry.key_id,
    )


def legacy_hash(canonical: str) -> str:
    """The pre-HMAC rule: plain SHA-256, which anyone can recompute."""
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
    """Queue an audit entry on ``session``; it is chained and inserted just before COMMIT.

    A rollback (or closing the session without committing) discards it with the mutation.
    """
    entry = AuditEntry(
        experiment_id=experiment_id,
        actor=actor.sub,
        actor_roles=list(actor.roles),
        action=action,
        before=_jsonable(before),
        after=_jsonable(after),
        request_id=actor.request_id,
        client_ip=actor.client_ip,
    )
    session.info.setdefault(_PENDING, []).append(entry)
    return entry


def _append_pending(session: Session, pending: list[AuditEntry]) -> None:
    keys = current_keys()
    session.flush()  # the mutation's own rows, and their locks, come first
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})
    prev_hash = session.execute(
        select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)
    ).scalar_one_or_none() or GENESIS_HASH
    now = datetime.now(timezone.utc)
    for entry in pending:
        entry.created_at = now
        entry.prev_hash = prev_hash
        entry.key_id = keys.current_id
        entry.hash = keys.sign(canonical_entry(entry))
        prev_hash = entry.hash
        session.add(entry)
    session.flush()


@event.listens_for(Session, "before_commit")
def _chain_before_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        _append_pending(session, pending)


@event.listens_for(Session, "after_transaction_end")
def _discard_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING, None)

"""The stream side of ingestion: drain ``ingest:events`` into PostgreSQL.

A drain reads the stream through the ``ingest-writers`` consumer group, about
``BATCH_EVENTS`` events at a time, and hands each batch to
:func:`services.ingestion.writer.write_with_retry`. Stream entries are acknowledged
and deleted only after the commit; a crash before that leaves them pending, and the
next drain (or any other consumer, once they have been idle for ``CLAIM_IDLE_MS``)
writes them again, the unique ``event_id`` making the second write a no-op.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from core import metrics
from core import redis as redis_state

from ..cache import STREAM_CALLER_ENTRIES_KEY, STREAM_KEY
from ..cache import STREAM_GROUP as GROUP
from .records import StagedEvent, coerce_record
from .staging import ENTRY_EVENTS
from .writer import BATCH_EVENTS, DatabaseUnavailable, WriteResult, write_dead_letters, write_with_retry

log = logging.getLogger(__name__)

#: How long a drain that has caught up waits for new entries before it ends (ms, < socket timeout).
IDLE_WAIT_MS = 200
#: Pending entries idle this long belong to a dead consumer and are claimed.
CLAIM_IDLE_MS = 10_000


@dataclass
class DrainReport:
    entries: int = 0
    written: WriteResult = field(default_factory=WriteResult)
    malformed: int = 0
    batches: int = 0
    claimed: int = 0
    #: True when the run stopped on its time budget with entries still waiting.
    backlog: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "received": self.written.received + self.malformed,
            "inserted": self.written.inserted,
            "duplicates": self.written.duplicates,
            "dead_lettered": self.written.dead_lettered + self.malformed,
            "batches": self.batches,
            "claimed": self.claimed,
            "backlog": self.backlog,
            "seconds": round(self.seconds, 3),
        }


def default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _read(
    client: redis.Redis, consumer: str, stream_id: str, count: int, block_ms: int | None = None
) -> list[tuple[bytes, dict]]:
    response = client.xreadgroup(GROUP, consumer, {STREAM_KEY: stream_id}, count=count, block=block_ms)
    if not response:
        return []
    entries = response[0][1]
    vanished = [entry_id for entry_id, fields in entries if not fields]
    if vanished:  # pending but deleted from the stream: nothing left to write
        client.xack(STREAM_KEY, GROUP, *vanished)
    return [(entry_id, fields) for entry_id, fields in entries if fields]


def _read_batch(
    client: redis.Redis, consumer: str, block_ms: int | None = None
) -> tuple[list[tuple[bytes, dict]], bool]:
    """New entries holding about ``BATCH_EVENTS`` events; second value: the stream ran dry.

    With ``block_ms`` the first read waits that long for an entry to arrive.
    """
    entries: list[tuple[bytes, dict]] = []
    events = 0
    while events < BATCH_EVENTS:
        # Entries hold 1 to ENTRY_EVENTS events: never ask for more than could fit.
        wanted = max(1, (BATCH_EVENTS - events) // ENTRY_EVENTS)
        got = _read(client, consumer, ">", wanted, block_ms if not entries else None)
        entries.extend(got)
        for _, fields in got:
            events += _events_in(fields)
        if len(got) < wanted:
            return entries, True
    return entries, False


def _events_in(fields: dict) -> int:
    try:
        return max(1, int(fields.get(b"n", 1)))
    except ValueError:
        return 1


def _decode(entries: list[tuple[bytes, dict]]) -> tuple[list[StagedEvent], list[tuple[str | None, object, str]]]:
    records: list[StagedEvent] = []
    poison: list[tuple[str | None, object, str]] = []
    for entry_id, fields in entries:
        payload = fields.get(b"e")
        if payload is None:
            batch = None
        else:
            try:
                batch = json.loads(payload)
            except ValueError as exc:
                raw = payload.decode(errors="replace")
                poison.append((None, {"stream_entry": entry_id.decode(), "raw": raw}, f"undecodable entry: {exc}"))
                continue
        if not isinstance(batch, list):
            poison.append((None, {"stream_entry": entry_id.decode(), "raw": str(fields)[:4000]}, "entry holds no event list"))
            continue
        for raw in batch:
            try:
                records.append(coerce_record(raw))
            except (ValueError, TypeError, OverflowError) as exc:
                event_id = raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], str) else None
                poison.append((event_id, raw, str(exc)))
    return records, poison


# XACK, then XDEL entry by entry: an entry actually deleted here (not by a concurrent
# drain that claimed it too) gives its caller's backlog share back (field ``c``), so the
# per-caller counts stay exact whoever acknowledges first. ARGV: the group, then
# (entry id, caller) pairs.
_ACKNOWLEDGE_LUA = """
for i = 2, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 and ARGV[i + 1] ~= '' then
    if redis.call('HINCRBY', KEYS[2], ARGV[i + 1], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[i + 1]) end
  end
end
return 1
"""


def _acknowledge(client: redis.Redis, entries: list[tuple[bytes, dict]]) -> None:
    """XACK then XDEL, atomically (the stream's length is the backlog), returning each caller's share."""
    args: list[Any] = [GROUP]
    for entry_id, fields in entries:
        args.extend((entry_id, fields.get(b"c", b"")))
    redis_state.script(client, _ACKNOWLEDGE_LUA)(keys=[STREAM_KEY, STREAM_CALLER_ENTRIES_KEY], args=args)


def request_ids(entries: list[tuple[bytes, dict]]) -> list[str]:
    """The API request ids the entries came from (field ``r``), in order, without repeats."""
    return list(dict.fromkeys(fields[b"r"].decode(errors="replace") for _, fields in entries if fields.get(b"r")))


def process_entries(client: redis.Redis, entries: list[tuple[bytes, dict]], report: DrainReport) -> None:
    """Write the entries' events in one transaction, then acknowledge them and count them."""
    if not entries:
        return
    started = time.perf_counter()
    records, poison = _decode(entries)
    written = WriteResult()
    try:
        if poison:
            write_dead_letters(poison)
        if records:
            written = write_with_retry(records)
    except DatabaseUnavailable:
        metrics.INGEST_DRAIN_FAILURES.inc()
        log.error(
            "a batch of %d events could not be written and stays queued; request ids: %s",
            len(records) + len(poison), ", ".join(request_ids(entries)) or "none recorded",
        )
        raise
    # Counted once committed: should the acknowledgement fail, the redelivered batch is
    # counted again only as duplicates.
    _count(written, len(poison), time.perf_counter() - started)
    dead = written.dead_lettered + len(poison)
    if dead:
        log.warning(
            "%d of %d events went to the dead-letter table; request ids of the batch: %s",
            dead, written.received + len(poison), ", ".join(request_ids(entries)) or "none recorded",
        )
    _acknowledge(client, entries)
    report.malformed += len(poison)
    report.written.add(written)
    report.batches += 1
    report.entries += len(entries)


def _count(written: WriteResult, malformed: int, seconds: float) -> None:
    metrics.INGEST_BATCH_SECONDS.observe(seconds)
    metrics.INGEST_DRAINED.inc(written.received + malformed)
    metrics.INGEST_INSERTED.inc(written.inserted)
    metrics.INGEST_DUPLICATES.inc(written.duplicates)
    metrics.INGEST_DEAD_LETTERS.inc(written.dead_lettered + malformed)
    for (experiment_id, event_type), n in written.inserted_by.items():
        metrics.EXPERIMENT_METRICS.labels(experiment_id=experiment_id, event_type=event_type).inc(n)


def drain(
    client: redis.Redis,
    *,
    consumer: str | None = None,
    budget_s: float = 2.0,
    claim_idle_ms: int = CLAIM_IDLE_MS,
) -> DrainReport:
    """Drain the stream for up to ``budget_s`` seconds.

    Order: this consumer's own pending entries (a previous run that failed before
    acknowledging), then entries left pending by dead consumers (idle longer than
    ``claim_idle_ms``, e.g. a worker killed with SIGKILL), then new entries.
    """
    started = time.monotonic()
    consumer = consumer or default_consumer()
    report = DrainReport()
    ensure_group(client)

    # Own pending entries first: "0" re-reads what this consumer was given but never acked.
    while True:
        entries = _read(client, consumer, "0", max(1, BATCH_EVENTS // ENTRY_EVENTS))
        if not entries:
            break
        process_entries(client, entries, report)

    cursor = "0-0"
    while True:
        cursor, claimed, *_ = client.xautoclaim(
            STREAM_KEY, GROUP, consumer, min_idle_time=claim_idle_ms, start_id=cursor,
            count=max(1, BATCH_EVENTS // ENTRY_EVENTS),
        )
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
        if claimed:
            report.claimed += len(claimed)
            process_entries(client, claimed, report)
        if cursor in (b"0-0", "0-0"):
            break

    block_ms: int | None = None
    while True:
        entries, dry = _read_batch(client, consumer, block_ms)
        if not entries:
            break  # idle: nothing new, even after waiting a moment
        process_entries(client, entries, report)
        if time.monotonic() - started >= budget_s:
            report.backlog = True  # events are still flowing: a successor run takes over
            break
        # Caught up: wait briefly for more instead of leaving them to the next beat tick,
        # so under steady traffic events are written within a batch's time, not a tick's.
        block_ms = IDLE_WAIT_MS if dry else None
    report.seconds = time.monotonic() - started
    return report


@dataclass
class Backlog:
    length: int
    pending: int
    lag: int | None
    consumers: int
    #: Unix time (ms) the oldest entry still in the stream was queued; None when empty.
    oldest_ms: int | None = None

    def oldest_age_s(self, now_s: float | None = None) -> float:
        """Seconds the oldest unwritten entry has waited (0 when the stream is empty)."""
        if self.oldest_ms is None:
            return 0.0
        return max(0.0, (time.time() if now_s is None else now_s) - self.oldest_ms / 1000)


def backlog(client: redis.Redis) -> Backlog:
    """Stream length (entries not yet written), pending (delivered, not acknowledged), lag
    and the oldest entry's time (entries are deleted once written, so the first one left is
    the oldest unwritten; its id is the Redis server's clock when it was queued)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.xlen(STREAM_KEY)
        pipe.xrange(STREAM_KEY, "-", "+", count=1)
        length, first = pipe.execute()
    oldest_ms = int(first[0][0].split(b"-")[0]) if first else None
    try:
        groups = client.xinfo_groups(STREAM_KEY)
    except redis.ResponseError:
        groups = []
    for group in groups:
        if group.get("name") in (GROUP, GROUP.encode()):
            return Backlog(
                length, int(group.get("pending", 0)), group.get("lag"), int(group.get("consumers", 0)), oldest_ms
            )
    return Backlog(length, 0, None, 0, oldest_ms)


def prune_consumers(client: redis.Redis, idle_ms: int = 3600_000) -> int:
    """Forget consumers (dead worker processes) with nothing pending and idle for an hour."""
    removed = 0
    try:
        consumers = client.xinfo_consumers(STREAM_KEY, GROUP)
    except redis.ResponseError:
        return 0
    for consumer in consumers:
        if int(consumer.get("pending", 0)) == 0 and int(consumer.get("idle", 0)) >= idle_ms:
            client.xgroup_delconsumer(STREAM_KEY, GROUP, consumer["name"])
            removed += 1
    return removed

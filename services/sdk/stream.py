"""Change notifications for SDK clients (``GET /api/sdk/stream``, server-sent events).

One watcher thread per API process polls the snapshot version (one Redis GET every
``POLL_INTERVAL_S``, only while a stream is open) and wakes every open stream of the
process when the snapshot's ETag changes; streams never touch Redis themselves, so a
thousand open streams cost the same Redis traffic as one.

Each open stream holds one web server thread (gunicorn's gthread workers run a
request per thread), so a process accepts at most ``sdk_stream_slots`` of them at
once and refuses the next with 503 and ``Retry-After``; a stream also ends after
``sdk_stream_max_seconds`` with an ``event: reconnect`` so that long-lived
connections rotate and a restarted or overloaded server is not held hostage. The
client reconnects (and polls ``/api/sdk/definitions`` with ``If-None-Match`` while it
cannot), so no change is missed: the first event on every connection carries the
current ETag.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import redis

from .definitions import current_snapshot

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
# After a failure (Redis or PostgreSQL down), wait this long before the next attempt.
FAILURE_BACKOFF_S = 5.0


class ChangeWatcher:
    """Keeps the current ETag of the definitions snapshot and wakes waiters when it moves."""

    def __init__(self, client_factory: Callable[[], redis.Redis | None], poll_interval_s: float = POLL_INTERVAL_S):
        self._client_factory = client_factory
        self._poll_interval_s = poll_interval_s
        self._condition = threading.Condition()
        self._etag: str | None = None
        self._seen: tuple[str | None, str | None] = (None, None)
        self._sequence = 0
        self._listeners = 0
        self._thread: threading.Thread | None = None

    @property
    def etag(self) -> str | None:
        return self._etag

    def listen(self) -> None:
        with self._condition:
            self._listeners += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sdk-change-watcher", daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def unlisten(self) -> None:
        with self._condition:
            self._listeners -= 1

    def wait_for_change(self, seen: int, timeout_s: float) -> tuple[int, str | None]:
        """Block until the sequence moves past ``seen`` or the timeout; (sequence, etag)."""
        with self._condition:
            self._condition.wait_for(lambda: self._sequence != seen, timeout=timeout_s)
            return self._sequence, self._etag

    def _run(self) -> None:
        while True:
            with self._condition:
                # Idle (no open stream): sleep until one opens instead of polling Redis.
                self._condition.wait_for(lambda: self._listeners > 0)
            try:
                snapshot = current_snapshot(self._client_factory())
            except Exception as exc:  # the watcher must outlive outages
                log.warning("SDK change watcher could not read the snapshot: %s", exc)
                time.sleep(FAILURE_BACKOFF_S)
                continue
            with self._condition:
                # A new version wakes the streams even when the ETag came back to the one
                # this watcher saw last: A -> B -> A between two polls, with a stream that
                # connected (and sent B) in between, must still hear about A.
                if (snapshot.version, snapshot.header_etag) != self._seen:
                    self._seen = (snapshot.version, snapshot.header_etag)
                    self._etag = snapshot.header_etag
                    self._sequence += 1
                    self._condition.notify_all()
            # Redis down: no version to watch, each look is a rebuild; look less often.
            time.sleep(self._poll_interval_s if snapshot.version is not None else FAILURE_BACKOFF_S)


class StreamSlots:
    """A per-process cap on open streams (each one holds a server thread)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    def try_acquire(self) -> bool:
        with self._lock:
            if self._open >= self.limit:
                return False
            self._open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._open -= 1


def _event(name: str, data: dict, event_id: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {name}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return ("\n".join(lines) + "\n\n").encode()


def events(
    watcher: ChangeWatcher,
    current_etag: Callable[[], str],
    *,
    known_etag: str | None,
    max_seconds: float,
    heartbeat_s: float,
    retry_ms: int,
) -> Iterator[bytes]:
    """The SSE byte stream of one connection (the caller holds and releases its slot).

    Events: ``definitions`` ``{"etag"}`` when the snapshot differs from what the client
    last saw (immediately on connect if it does), a ``:`` comment as heartbeat, and a
    final ``reconnect`` after ``max_seconds``. The first ETag is read at connect time,
    not taken from the watcher, whose copy may be up to one poll old (or, after an idle
    spell, older).
    """
    watcher.listen()
    try:
        deadline = time.monotonic() + max_seconds
        yield f"retry: {retry_ms}\n\n".encode()
        sequence, etag = watcher.wait_for_change(-1, 0)
        try:
            etag = current_etag()
        except Exception as exc:  # fall back to the watcher's copy
            log.warning("could not read the current definitions ETag: %s", exc)
        last_sent = known_etag
        while True:
            if etag is not None and etag != last_sent:
                yield _event("definitions", {"etag": etag}, etag.strip('"'))
                last_sent = etag
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield _event("reconnect", {"after_ms": retry_ms})
                return
            new_sequence, etag = watcher.wait_for_change(sequence, min(heartbeat_s, remaining))
            if new_sequence == sequence:
                yield b": keep-alive\n\n"
            sequence = new_sequence
    finally:
        watcher.unlisten()

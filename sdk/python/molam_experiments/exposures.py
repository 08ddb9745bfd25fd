"""The exposure queue: local decisions, uploaded in batches by a background thread.

``offer`` is on the caller's hot path: no lock, no I/O. A user already exposed to the
same variant is not queued again (the server is idempotent anyway; this only saves
bandwidth). The queue is bounded: when full, new exposures are dropped and counted,
never blocking ``assign``. Upload failures (network, 429, 5xx) keep the batch and retry
with exponential backoff; a batch the server refuses as a whole (4xx) is dropped and
counted; per-item rejections are counted by reason.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from typing import Any

from .transport import Transport, TransportError

log = logging.getLogger(__name__)

BATCH_PATH = "/api/assignments/batch"
MAX_BATCH = 1_000
# Users remembered as exposed (to skip re-sending); forgotten all at once when full.
RECENT_LIMIT = 200_000


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0.5, 1] × min(cap, base × 2^attempt)."""
    return min(cap_s, base_s * (2 ** attempt)) * (0.5 + random.random() / 2)


class ExposureQueue:
    def __init__(
        self,
        transport: Transport,
        *,
        capacity: int,
        batch_size: int,
        interval_s: float,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ):
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self._transport = transport
        self._capacity = capacity
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._items: deque[tuple[str, str, str, dict[str, Any], float]] = deque()
        self._recent: dict[tuple[str, str], str] = {}
        self.unsent: set[tuple[str, str]] = set()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._drop_lock = threading.Lock()
        self.dropped = 0
        self.sent = 0
        self.rejected: Counter[str] = Counter()
        self.failed_uploads = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="molam-exposures", daemon=True)
        self._thread.start()

    # --- hot path --------------------------------------------------------------------

    def offer(self, experiment_id: str, molam_id: str, variant_id: str, context: dict[str, Any]) -> None:
        key = (experiment_id, molam_id)
        if self._recent.get(key) == variant_id:
            return
        items = self._items
        if len(items) >= self._capacity:
            with self._drop_lock:
                self.dropped += 1
            return
        if len(self._recent) >= RECENT_LIMIT:
            self._recent.clear()
        self._recent[key] = variant_id
        self.unsent.add(key)
        items.append((experiment_id, molam_id, variant_id, context, time.time()))
        if len(items) >= self._batch_size:
            self._wake.set()

    # --- control ---------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._items)

    def flush(self, timeout_s: float) -> bool:
        """Upload everything queued now; True if the queue drained within the timeout."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            return self._idle.wait_for(lambda: not self._items and not self._in_flight, timeout=max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float) -> bool:
        drained = self.flush(timeout_s)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=1.0)
        return drained

    def stats(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "sent": self.sent,
            "dropped": self.dropped,
            "rejected": dict(self.rejected),
            "failed_uploads": self.failed_uploads,
            "last_error": self.last_error,
        }

    # --- the uploader ----------------------------------------------------------------

    def _take(self) -> list[tuple[str, str, str, dict[str, Any], float]]:
        batch = []
        items = self._items
        while items and len(batch) < self._batch_size:
            batch.append(items.popleft())
        return batch

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            while True:
                with self._idle:
                    batch = self._take()
                    self._in_flight = len(batch)
                if not batch:
                    break
                try:
                    self._upload(batch)
                finally:
                    with self._idle:
                        self._in_flight = 0
                        self._idle.notify_all()
                if self._stopping:
                    break
            with self._idle:
                self._idle.notify_all()

    def _upload(self, batch: list[tuple[str, str, str, dict[str, Any], float]]) -> None:
        body = {
            "exposures": [
                {
                    "experiment_id": experiment_id, "molam_id": molam_id, "variant_id": variant_id,
                    "evaluated_at": datetime.fromtimestamp(evaluated_at, timezone.utc).isoformat(timespec="microseconds"),
                    **context,
                }
                for experiment_id, molam_id, variant_id, context, evaluated_at in batch
            ]
        }
        attempt = 0
        while True:
            delay = None
            try:
                reply = self._transport.request("POST", BATCH_PATH, body)
            except TransportError as exc:
                self.last_error = str(exc)
                delay = backoff_delay(attempt, self._backoff_base_s, self._backoff_cap_s)
            else:
                if reply.status == 200:
                    self._settle(batch, reply.json())
                    return
                self.last_error = f"HTTP {reply.status} from {BATCH_PATH}"
                if reply.status == 429 or reply.status >= 500:
                    delay = max(reply.retry_after(0.0), backoff_delay(attempt, self._backoff_base_s, self._backoff_cap_s))
                else:
                    # Refused as a whole (bad token, role, body): retrying cannot help.
                    log.warning("exposure batch of %d refused: %s", len(batch), reply.body[:500])
                    self.rejected[f"http_{reply.status}"] += len(batch)
                    self._forget(batch)
                    return
            self.failed_uploads += 1
            attempt += 1
            if self._stopping:
                # Closing: give up on this batch rather than hold close() hostage.
                self.rejected["unsent_at_close"] += len(batch)
                self._forget(batch)
                return
            self._wake.wait(delay)
            self._wake.clear()
            if self._stopping:
                continue

    def _forget(self, batch: list[tuple[str, str, str, dict[str, Any], float]]) -> None:
        for experiment_id, molam_id, variant_id, _, _ in batch:
            key = (experiment_id, molam_id)
            self.unsent.discard(key)
            if self._recent.get(key) == variant_id:
                del self._recent[key]

    def _settle(self, batch: list[tuple[str, str, str, dict[str, Any], float]], answer: Any) -> None:
        accepted = answer.get("accepted", []) if isinstance(answer, dict) else []
        rejected = answer.get("rejected", []) if isinstance(answer, dict) else []
        self.sent += len(accepted)
        refused = set()
        for item in rejected:
            self.rejected[str(item.get("reason"))] += 1
            refused.add(item.get("index"))
        for index, (experiment_id, molam_id, variant_id, _, _) in enumerate(batch):
            key = (experiment_id, molam_id)
            self.unsent.discard(key)
            if index in refused and self._recent.get(key) == variant_id:
                # Not stored: let the next decision for this user be sent again.
                del self._recent[key]

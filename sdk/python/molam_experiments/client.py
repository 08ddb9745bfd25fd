"""The Molam Experiments client: local evaluation where it is exact, the API elsewhere.

``assign`` answers fixed-split experiments in-process from the downloaded definitions
(see :mod:`molam_experiments.evaluation`) and queues the exposure for upload; it asks
``POST /api/experiments/{id}/assign`` whenever a stored assignment could make the
server's answer differ from the hash: bandits, users whose split bucket lies in the
experiment's ``server_buckets`` (arms paused now or before), and, unless
``exact_targeting_misses=False``, users who fail the targeting (the server keeps a user
assigned earlier in their variant even when their attributes changed since).

No failure raises on the ``assign`` path: no definitions yet (server unreachable at
start, no bootstrap file) → ``eligible: false, reason: "unavailable"``; definitions
that cannot be refreshed → the last good set keeps serving and ``status()`` says it is
stale; exposure uploads that fail → retried with backoff by a background thread.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .evaluation import CONTEXT_KEYS, TARGETING_LIST_KEYS, DefinitionError, Experiment, compile_document, decide
from .exposures import ExposureQueue, backoff_delay
from .transport import Reply, TokenSource, Transport, TransportError

log = logging.getLogger(__name__)

DEFINITIONS_PATH = "/api/sdk/definitions"
STREAM_PATH = "/api/sdk/stream"
EVENTS_BATCH_PATH = "/api/events/batch"
MAX_EVENTS_BATCH = 1_000
_STRING_KEYS = frozenset(TARGETING_LIST_KEYS)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The answer of ``POST /assign``, with where it came from.

    Local answers carry ``assigned_at=None`` and ``new=None``: only the server knows
    when the user was first recorded (the exposure it receives carries the evaluation
    time). ``source`` is ``"local"``, ``"server"`` or ``"client"`` (the client could
    not ask: ``reason`` says why).
    """

    experiment_id: str
    molam_id: str
    eligible: bool
    variant_id: str | None = None
    variant_name: str | None = None
    is_control: bool | None = None
    config: dict[str, Any] | None = None
    assigned_at: str | None = None
    new: bool | None = None
    reason: str | None = None
    source: str = "local"

    def as_dict(self) -> dict[str, Any]:
        """The server's response shape (without ``source``)."""
        if not self.eligible:
            return {"experiment_id": self.experiment_id, "molam_id": self.molam_id, "eligible": False,
                    "variant_id": None, "reason": self.reason}
        out = asdict(self)
        del out["reason"], out["source"]
        return out


class ClientError(Exception):
    """track / track_batch could not deliver (after retries, or refused by the server)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Client:
    """``Client(base_url, token, refresh="stream" | seconds, bootstrap_path=None)``.

    ``token`` is a Molam ID bearer token (a service role) or a callable returning a
    fresh one. ``refresh="stream"`` follows ``GET /api/sdk/stream`` (changes arrive in
    about a second; while the stream is refused or broken the client polls every
    ``poll_fallback_s``); a number polls ``GET /api/sdk/definitions`` that often with
    ``If-None-Match``. ``bootstrap_path`` is a definitions document (as served, e.g.
    saved by :meth:`save_bootstrap`) used when the server is unreachable at start.
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        refresh: str | float = "stream",
        bootstrap_path: str | Path | None = None,
        *,
        timeout_s: float = 2.0,
        upload_timeout_s: float = 30.0,
        start_timeout_s: float = 5.0,
        exact_targeting_misses: bool = True,
        stale_after_s: float | None = None,
        poll_fallback_s: float = 10.0,
        exposure_queue_size: int = 100_000,
        exposure_batch_size: int = 1_000,
        exposure_flush_interval_s: float = 1.0,
        retry_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ):
        if refresh != "stream" and not (isinstance(refresh, (int, float)) and not isinstance(refresh, bool) and refresh > 0):
            raise ValueError('refresh must be "stream" or a positive number of seconds')
        self._transport = Transport(base_url, token, timeout_s)
        self._refresh = refresh
        self._exact_targeting_misses = exact_targeting_misses
        self._poll_fallback_s = poll_fallback_s
        self._stale_after_s = stale_after_s if stale_after_s is not None else (
            60.0 if refresh == "stream" else max(60.0, 3 * float(refresh))
        )
        self._retry_attempts = retry_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._experiments: dict[str, Experiment] | None = None
        self._etag: str | None = None
        self._body: bytes | None = None
        self._source: str | None = None
        self._loaded_at: str | None = None
        self._last_contact: float | None = None
        self._last_contact_at: str | None = None
        self._last_error: str | None = None
        self._stream_connected = False
        self._stream: Any = None
        self._server_calls = 0
        self._server_errors = 0
        self._fetch_lock = threading.Lock()
        self._closed = threading.Event()
        self._upload_timeout_s = upload_timeout_s
        self._exposures = ExposureQueue(
            # A batch of 1,000 is 1,000 rows written in one transaction: allow it time.
            Transport(base_url, token, upload_timeout_s),
            capacity=exposure_queue_size, batch_size=exposure_batch_size, interval_s=exposure_flush_interval_s,
            backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s,
        )
        # Background downloads may meet a snapshot being rebuilt after a change: allow them
        # the upload timeout rather than the hot path's.
        self._refresh_transport = Transport(base_url, token, upload_timeout_s)
        if not self._fetch(self._refresh_transport, timeout_s=start_timeout_s) and bootstrap_path is not None:
            self._load_bootstrap(Path(bootstrap_path))
        self._refresher = threading.Thread(target=self._refresh_loop, name="molam-definitions", daemon=True)
        self._refresher.start()

    # --- assign ----------------------------------------------------------------------

    def assign(self, experiment_id: str, molam_id: str, **context: Any) -> Assignment:
        """The user's variant, as ``POST /api/experiments/{id}/assign`` would answer.

        ``context``: ``country``, ``lang``, ``currency``, ``region``, ``device`` (strings)
        and ``txn_count`` (int); ``None`` means "not known". Raises only for arguments
        the server would refuse whatever its state (TypeError / ValueError).
        """
        if not isinstance(molam_id, str) or not 0 < len(molam_id) <= 200:
            raise ValueError("molam_id must be a string of 1 to 200 characters")
        for key, value in context.items():
            if key not in CONTEXT_KEYS:
                raise TypeError(f"unknown context attribute {key!r} (known: {', '.join(sorted(CONTEXT_KEYS))})")
            if value is not None and (
                (key in _STRING_KEYS and not isinstance(value, str))
                or (key == "txn_count" and (type(value) is not int or value < 0))
            ):
                raise TypeError(f"{key} must be {'a string' if key in _STRING_KEYS else 'a non-negative int'}")
        experiments = self._experiments
        if experiments is None:
            return Assignment(experiment_id, molam_id, False, reason="unavailable", source="client")
        experiment = experiments.get(experiment_id)
        if experiment is None:
            return Assignment(experiment_id, molam_id, False, reason="not_running", source="local")
        if not experiment.is_local:
            return self._server_assign(experiment_id, molam_id, context)
        decision = decide(experiment, molam_id, context)
        variant = decision.variant
        if variant is None:
            if self._exact_targeting_misses and decision.reason != "outside_coverage":
                return self._server_assign(experiment_id, molam_id, context)
            return Assignment(experiment_id, molam_id, False, reason=decision.reason, source="local")
        if decision.server_required:
            return self._server_assign(experiment_id, molam_id, context)
        self._exposures.offer(experiment_id, molam_id, variant.id, {k: v for k, v in context.items() if v is not None})
        return Assignment(
            experiment_id, molam_id, True, variant.id, variant.name, variant.is_control, variant.config, source="local"
        )

    def _server_assign(self, experiment_id: str, molam_id: str, context: dict[str, Any]) -> Assignment:
        self._server_calls += 1
        body = {"molam_id": molam_id, **{k: v for k, v in context.items() if v is not None}}
        try:
            reply = self._transport.request("POST", f"/api/experiments/{experiment_id}/assign", body)
        except TransportError as exc:
            self._server_errors += 1
            self._last_error = str(exc)
            return Assignment(experiment_id, molam_id, False, reason="unavailable", source="client")
        if reply.status == 200:
            answer = reply.json()
            return Assignment(
                experiment_id=answer["experiment_id"], molam_id=answer["molam_id"], eligible=answer["eligible"],
                variant_id=answer.get("variant_id"), variant_name=answer.get("variant_name"),
                is_control=answer.get("is_control"), config=answer.get("config"), assigned_at=answer.get("assigned_at"),
                new=answer.get("new"), reason=answer.get("reason"), source="server",
            )
        if reply.status in (404, 409):
            return Assignment(experiment_id, molam_id, False, reason="not_running", source="server")
        self._server_errors += 1
        self._last_error = f"HTTP {reply.status} from POST /assign"
        if reply.status == 422:
            return Assignment(experiment_id, molam_id, False, reason="invalid_context", source="server")
        return Assignment(experiment_id, molam_id, False, reason="unavailable", source="client")

    def experiment(self, experiment_id: str) -> Experiment | None:
        """The compiled definition of a running experiment (None when not running or not loaded)."""
        experiments = self._experiments
        return None if experiments is None else experiments.get(experiment_id)

    # --- exposures and events ----------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Upload the queued exposures now; True if everything was sent within the timeout."""
        return self._exposures.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush, then stop the background threads. True if every exposure was delivered."""
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        drained = self._exposures.close(timeout_s)
        self._refresher.join(timeout=2.0)
        self._transport.close()
        return drained

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def track(self, experiment_id: str, molam_id: str, event_type: str, *, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """``POST /api/experiments/{id}/track`` with retries; the event id makes retries count once.

        A still-queued exposure of this user is uploaded first, so the server knows the
        assignment the event belongs to. Returns ``{"event_id", "status"}``; raises
        ClientError when the server refuses the event or stays unreachable.
        """
        if (experiment_id, molam_id) in self._exposures.unsent:
            self.flush()
        body = {"molam_id": molam_id, "event_type": event_type, "event_id": event_id or uuid.uuid4().hex, **fields}
        return self._with_retries("POST", f"/api/experiments/{experiment_id}/track", body, 202)

    def track_batch(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /api/events/batch`` (each event with ``experiment_id``), in chunks of 1,000,
        with retries and event ids. Returns ``{"accepted": [...], "rejected": [...]}`` with
        indexes into ``events``."""
        prepared = [{**event, "event_id": event.get("event_id") or uuid.uuid4().hex} for event in events]
        if any((e.get("experiment_id"), e.get("molam_id")) in self._exposures.unsent for e in prepared):
            self.flush()
        accepted, rejected = [], []
        for start in range(0, len(prepared), MAX_EVENTS_BATCH):
            chunk = prepared[start:start + MAX_EVENTS_BATCH]
            answer = self._with_retries("POST", EVENTS_BATCH_PATH, {"events": chunk}, 202, self._upload_timeout_s)
            accepted.extend(answer.get("accepted", []))
            rejected.extend({**r, "index": r["index"] + start} for r in answer.get("rejected", []))
        return {"accepted": accepted, "rejected": rejected}

    def _with_retries(self, method: str, path: str, body: Any, expected: int, timeout_s: float | None = None) -> Any:
        last: str = ""
        for attempt in range(self._retry_attempts):
            delay = backoff_delay(attempt, self._backoff_base_s, self._backoff_cap_s)
            try:
                reply = self._transport.request(method, path, body, timeout_s=timeout_s)
            except TransportError as exc:
                last = str(exc)
            else:
                if reply.status == expected:
                    return reply.json()
                if reply.status != 429 and reply.status < 500:
                    raise ClientError(f"{method} {path}: HTTP {reply.status}", reply.status, _json_or_text(reply))
                last = f"HTTP {reply.status}"
                delay = max(delay, reply.retry_after(0.0))
            if attempt + 1 < self._retry_attempts:
                time.sleep(delay)
        raise ClientError(f"{method} {path} failed after {self._retry_attempts} attempts: {last}")

    # --- definitions -----------------------------------------------------------------

    def _install(self, body: bytes, etag: str | None, source: str) -> None:
        experiments = compile_document(json.loads(body))
        self._experiments = experiments
        self._body = body
        self._etag = etag
        self._source = source
        self._loaded_at = _now_iso()

    def _contact(self) -> None:
        self._last_contact = time.monotonic()
        self._last_contact_at = _now_iso()

    def _fetch(self, transport: Transport, timeout_s: float | None = None) -> bool:
        """GET the definitions (If-None-Match the current ETag); True on 200 or 304."""
        with self._fetch_lock:
            headers = {"If-None-Match": self._etag} if self._etag and self._source == "server" else None
            try:
                reply = transport.request("GET", DEFINITIONS_PATH, headers=headers, timeout_s=timeout_s)
            except TransportError as exc:
                self._last_error = str(exc)
                return False
            if reply.status == 304:
                self._contact()
                return True
            if reply.status != 200:
                self._last_error = f"HTTP {reply.status} from {DEFINITIONS_PATH}"
                return False
            try:
                self._install(reply.body, reply.headers.get("etag"), "server")
            except (ValueError, DefinitionError) as exc:
                # Keep the last good set rather than serve something half understood.
                self._last_error = f"unusable definitions: {exc}"
                return False
            self._contact()
            return True

    def _load_bootstrap(self, path: Path) -> None:
        try:
            self._install(path.read_bytes(), None, "bootstrap")
        except (OSError, ValueError, DefinitionError) as exc:
            self._last_error = f"bootstrap {path}: {exc}"
            log.warning("could not load bootstrap definitions from %s: %s", path, exc)

    def save_bootstrap(self, path: str | Path) -> bool:
        """Write the current definitions where ``bootstrap_path`` can read them; False if none."""
        body = self._body
        if body is None:
            return False
        target = Path(path)
        temporary = target.with_suffix(target.suffix + ".tmp")
        temporary.write_bytes(body)
        temporary.replace(target)
        return True

    def _refresh_loop(self) -> None:
        transport = self._refresh_transport
        if self._refresh != "stream":
            while not self._closed.wait(float(self._refresh)):
                self._fetch(transport)
            return
        failures = 0
        while not self._closed.is_set():
            wait_s = self._follow_stream(transport)
            if wait_s is None:
                failures = 0
                wait_s = 0.0
            else:
                failures += 1
                wait_s = max(wait_s, backoff_delay(min(failures, 6), self._backoff_base_s, self._backoff_cap_s))
            # Whatever ended the stream, re-read the definitions (cheap: If-None-Match),
            # so a change made while disconnected is never missed.
            if not self._closed.is_set():
                self._fetch(transport)
            if self._closed.wait(wait_s):
                return

    def _follow_stream(self, transport: Transport) -> float | None:
        """Follow one stream connection. None: it ended normally (reconnect now);
        otherwise the seconds to wait before the next attempt."""
        headers = {"Last-Event-ID": self._etag.strip('"')} if self._etag and self._source == "server" else None
        try:
            stream = transport.stream(STREAM_PATH, headers, read_timeout_s=60.0)
        except TransportError as exc:
            self._last_error = str(exc)
            return self._backoff_base_s
        if stream.refused is not None:
            self._last_error = f"HTTP {stream.refused.status} from {STREAM_PATH}"
            # No slot (503) or refused: poll meanwhile, try the stream again later.
            return max(stream.refused.retry_after(self._poll_fallback_s), self._poll_fallback_s)
        self._stream = stream
        self._stream_connected = True
        try:
            for event in stream.events():
                if self._closed.is_set():
                    return None
                self._contact()
                if event is None:
                    continue
                if event.name == "definitions":
                    try:
                        etag = json.loads(event.data)["etag"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if etag != self._etag and not self._fetch(transport):
                        # Leave the stream: the outer loop downloads again, then reconnects.
                        return self._backoff_base_s
                elif event.name == "reconnect":
                    return None
        except TransportError as exc:
            self._last_error = str(exc)
            return self._backoff_base_s
        finally:
            self._stream_connected = False
            self._stream = None
            stream.close()
        return None

    # --- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Health of the client: definitions (source, ETag, staleness), refresh, exposures."""
        experiments = self._experiments
        age = None if self._last_contact is None else time.monotonic() - self._last_contact
        stale = experiments is not None and (age is None or age > self._stale_after_s)
        return {
            "ready": experiments is not None,
            "definitions": {
                "source": self._source,
                "etag": self._etag,
                "experiments": 0 if experiments is None else len(experiments),
                "loaded_at": self._loaded_at,
                "last_contact_at": self._last_contact_at,
                "seconds_since_contact": None if age is None else round(age, 3),
                "stale": stale,
                "stale_after_s": self._stale_after_s,
            },
            "refresh": {
                "mode": "stream" if self._refresh == "stream" else "poll",
                "interval_s": None if self._refresh == "stream" else float(self._refresh),
                "stream_connected": self._stream_connected,
            },
            "exposures": self._exposures.stats(),
            "server_assign": {"calls": self._server_calls, "errors": self._server_errors},
            "last_error": self._last_error,
        }


def _json_or_text(reply: Reply) -> Any:
    try:
        return reply.json()
    except ValueError:
        return reply.body.decode("utf-8", "replace")

"""HTTP to the Molam Experiments API with the standard library only.

One keep-alive connection per thread (``http.client`` connections are not thread
safe); a connection the server closed while idle is retried once on a fresh one.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import __version__

TokenSource = str | Callable[[], str]


class TransportError(Exception):
    """The server could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def retry_after(self, default: float) -> float:
        try:
            return max(0.0, float(self.headers.get("retry-after", "")))
        except ValueError:
            return default


_NETWORK_ERRORS = (OSError, http.client.HTTPException, socket.timeout)


class Transport:
    def __init__(self, base_url: str, token: TokenSource, timeout_s: float):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self._token = token
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout_s)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": f"molam-experiments-python/{__version__}",
        }
        if extra:
            headers.update(extra)
        return headers

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout_s: float | None = None
    ) -> Reply:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        all_headers = self._headers(headers)
        if payload is not None:
            all_headers["Content-Type"] = "application/json"
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            reused = connection is not None
            if connection is None:
                connection = self._connect(timeout_s)
                self._local.connection = connection
            try:
                connection.timeout = timeout_s
                if connection.sock is not None:
                    connection.sock.settimeout(timeout_s)
                connection.request(method, self._prefix + path, body=payload, headers=all_headers)
                response = connection.getresponse()
                data = response.read()
                reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
                if response.will_close:
                    self._drop()
                return reply
            except _NETWORK_ERRORS as exc:
                self._drop()
                # An idle keep-alive connection the server closed: one fresh attempt.
                if reused and attempt == 0 and not isinstance(exc, socket.timeout):
                    continue
                raise TransportError(f"{method} {path}: {exc!r}") from exc
        raise TransportError(f"{method} {path}: no answer")  # pragma: no cover

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        self._drop()

    def stream(self, path: str, headers: dict[str, str] | None, read_timeout_s: float) -> EventStream:
        """Open a server-sent events stream on its own connection."""
        connection = self._connect(self.timeout_s)
        try:
            connection.request("GET", self._prefix + path, headers=self._headers({"Accept": "text/event-stream", **(headers or {})}))
            response = connection.getresponse()
        except _NETWORK_ERRORS as exc:
            connection.close()
            raise TransportError(f"GET {path}: {exc!r}") from exc
        if response.status != 200:
            reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
            connection.close()
            return EventStream(None, None, reply)
        if connection.sock is not None:
            connection.sock.settimeout(read_timeout_s)
        return EventStream(connection, response, None)


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: str
    id: str | None
    retry_ms: int | None


class EventStream:
    """Server-sent events read line by line; ``refused`` holds a non-200 reply."""

    def __init__(self, connection: http.client.HTTPConnection | None, response: http.client.HTTPResponse | None, refused: Reply | None):
        self._connection = connection
        self._response = response
        self.refused = refused
        self.opened_at = time.monotonic()

    def events(self) -> Iterator[Event | None]:
        """Yields events, and None for each heartbeat comment; ends when the server closes."""
        if self._response is None:
            return
        name, data, event_id, retry = "message", [], None, None
        try:
            while True:
                line = self._response.readline()
                if not line:
                    return
                line = line.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if data or name != "message":
                        yield Event(name, "\n".join(data), event_id, retry)
                    elif retry is not None:
                        yield Event("retry", "", None, retry)
                    name, data, retry = "message", [], None
                    continue
                if line.startswith(":"):
                    yield None
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    event_id = value
                elif field == "retry" and value.isdigit():
                    retry = int(value)
        except Exception as exc:
            if self._connection is None:
                return  # closed by close(), possibly from another thread
            if isinstance(exc, _NETWORK_ERRORS):
                raise TransportError(f"stream: {exc!r}") from exc
            raise

    def close(self) -> None:
        """Safe from another thread: shutting the socket down wakes a blocked reader."""
        connection, self._connection = self._connection, None
        if connection is not None:
            if connection.sock is not None:
                try:
                    connection.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            connection.close()

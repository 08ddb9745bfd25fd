"""The one Redis client factory, and the state kept per client (scripts, outage breaker)."""
from __future__ import annotations

import threading
import time
import weakref

import redis
from redis.commands.core import Script

_clients: dict[str, redis.Redis] = {}


def get_redis(url: str) -> redis.Redis:
    """A pooled client per URL. Short timeouts: Redis being down must not hang a request."""
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
            health_check_interval=30,
            decode_responses=False,
        )
        _clients[url] = client
    return client


def reset_clients() -> None:
    """Forget pooled connections (after fork, or when tests repoint Redis)."""
    for client in _clients.values():
        client.connection_pool.disconnect()
    _clients.clear()


# --- per-client state: Lua script registrations and the outage breaker ----------------
# Both are keyed by the client object itself, weakly: an ``id()`` could be reused by a
# new client once an old one is collected, which would inherit the old one's state.

_scripts: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()
_down_until: weakref.WeakKeyDictionary[redis.Redis, float] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def script(client: redis.Redis, source: str) -> Script:
    """``source`` registered on ``client`` once (EVALSHA afterwards, EVAL on a flushed script cache)."""
    registered = _scripts.get(client)
    if registered is None:
        with _lock:
            registered = _scripts.setdefault(client, {})
    found = registered.get(source)
    if found is None:
        found = registered[source] = client.register_script(source)
    return found


def usable(client: redis.Redis | None) -> redis.Redis | None:
    """``client``, or None while it is marked down (callers then answer without Redis)."""
    if client is None:
        return None
    if not _down_until:  # the usual case: no outage, no weak-reference lookup
        return client
    until = _down_until.get(client)
    if until is not None:
        if time.monotonic() < until:
            return None
        _down_until.pop(client, None)
    return client


def mark_down(client: redis.Redis, seconds: float) -> None:
    """Skip ``client`` for ``seconds`` instead of paying a connection timeout per request."""
    with _lock:
        _down_until[client] = time.monotonic() + seconds

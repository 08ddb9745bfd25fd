"""The one Redis client factory."""
from __future__ import annotations

import redis

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

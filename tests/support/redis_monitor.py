"""Counting the commands clients send to Redis (round trips), apart from those a script runs."""
from __future__ import annotations

import threading
from collections.abc import Callable

from redis import Redis


def client_commands(redis_url: str, action: Callable[[], object]) -> list[str]:
    """The commands clients sent to Redis while ``action`` ran (MONITOR; those a script runs are left out)."""
    watcher, closer = Redis.from_url(redis_url), Redis.from_url(redis_url)
    closer.ping()  # connected before the count starts
    sentinel = "end-of-round-trip-count"
    seen: list[str] = []
    with watcher.monitor() as monitor:
        ready = threading.Event()

        def listen() -> None:
            ready.set()
            for command in monitor.listen():
                if sentinel in command["command"]:
                    return
                if command.get("client_type") != "lua":
                    seen.append(command["command"])

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        ready.wait(5)
        action()
        closer.echo(sentinel)
        thread.join(10)
    return seen

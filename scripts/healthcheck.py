"""Container healthcheck: exit 0 when ``URL`` answers 2xx within the timeout, 1 otherwise.

``python -m scripts.healthcheck http://127.0.0.1:3010/readyz`` — the image has no curl,
and the API's readiness (PostgreSQL, Redis, broker) or a Celery process's metrics
endpoint (its main process alive) is what a healthcheck should ask.
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float = 4.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m scripts.healthcheck URL", file=sys.stderr)
        return 2
    return 0 if check(argv[1]) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

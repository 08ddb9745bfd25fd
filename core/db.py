"""One engine and one session factory per process, and which way to reach PostgreSQL when.

- **Request session** (``api.context.session()``): a view's unit of work. The view calls a
  service, the request boundary commits (mutations through ``services.cache.commit_invalidating``)
  and the session is closed at teardown.
- **Task session scope** (:func:`session_scope`): a Celery task's or CLI command's unit of work;
  commits on success, rolls back on error. Jobs that must isolate one experiment's failure from
  the next open a :func:`new_session` per experiment instead.
- **Autocommit connection** (``get_engine().connect()`` with ``isolation_level="AUTOCOMMIT"``):
  single statements that are their own transaction, such as the assignment path's
  ``INSERT … ON CONFLICT`` and session-level advisory locks held for a job's duration.
- **Raw driver connection** (``get_engine().raw_connection()``): psycopg's own API where
  SQLAlchemy would cost a measurable share, namely COPY (the ingestion writer, CSV/NDJSON
  exports) and the drain's set-based batch statement.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None
_read_engine: Engine | None = None
_read_session_factory: sessionmaker[Session] | None = None


def init_engine(database_url: str, **engine_kwargs: object) -> Engine:
    """(Re)create the process's engine; called at app/worker start and after fork."""
    global _engine, _session_factory
    if _engine is not None:
        _engine.dispose()
    options: dict[str, object] = {
        "pool_pre_ping": True,
        "pool_size": 10,
        "max_overflow": 20,
        "connect_args": {"connect_timeout": 3},
    }
    options.update(engine_kwargs)
    _engine = create_engine(database_url, **options)
    _session_factory = sessionmaker(bind=_engine, expire_on_commit=False)
    return _engine


def init_read_engine(replica_url: str | None, **engine_kwargs: object) -> Engine | None:
    """Point read-only sessions at a replica (``None``: they use the primary).

    Every transaction on the replica is read-only (``default_transaction_read_only``),
    so a write that strayed onto a read session fails loudly rather than landing on a
    server that cannot keep it.
    """
    global _read_engine, _read_session_factory
    if _read_engine is not None:
        _read_engine.dispose()
        _read_engine = _read_session_factory = None
    if not replica_url:
        return None
    options: dict[str, object] = {
        "pool_pre_ping": True,
        "pool_size": 5,
        "max_overflow": 10,
        "connect_args": {"connect_timeout": 3, "options": "-c default_transaction_read_only=on"},
    }
    options.update(engine_kwargs)
    _read_engine = create_engine(replica_url, **options)
    _read_session_factory = sessionmaker(bind=_read_engine, expire_on_commit=False)
    return _read_engine


def get_read_engine() -> Engine:
    """The replica's engine when configured, else the primary's."""
    return _read_engine if _read_engine is not None else get_engine()


def new_read_session() -> Session:
    """A session for reads that tolerate replication lag: the replica when configured."""
    if _read_session_factory is not None:
        return _read_session_factory()
    return new_session()


def is_initialised() -> bool:
    return _engine is not None


def get_engine() -> Engine:
    if _engine is None:
        raise RuntimeError("database engine not initialised; call init_engine first")
    return _engine


def dispose_engine() -> None:
    """Drop pooled connections inherited across a fork (Celery prefork, gunicorn)."""
    if _engine is not None:
        _engine.dispose(close=False)
    if _read_engine is not None:
        _read_engine.dispose(close=False)


def new_session() -> Session:
    if _session_factory is None:
        raise RuntimeError("database engine not initialised; call init_engine first")
    return _session_factory()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work for tasks and CLI commands: commit on success, roll back on error."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

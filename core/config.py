"""Typed settings read from the environment, in one place.

Every process (API, Celery worker, beat, CLI, tests) builds its settings with
:func:`load_settings`; nothing else reads ``os.environ`` for configuration.

The project's ``.env`` file (``MOLAM_ENV_FILE`` names another; empty disables it) is
read when this module is first imported, so ``make run``, gunicorn, the worker, beat,
alembic and every CLI see the same values. Variables already in the environment win
over the file, as a deployment's environment should.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, overload

from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def env_file() -> Path | None:
    """The ``.env`` file this process reads, or ``None`` when disabled."""
    named = os.environ.get("MOLAM_ENV_FILE")
    if named is None:
        return PROJECT_ROOT / ".env"
    return Path(named) if named else None


def load_env_file() -> bool:
    """Read :func:`env_file` into ``os.environ`` without overriding what is set; True if read."""
    path = env_file()
    if path is None or not path.is_file():
        return False
    return load_dotenv(path, override=False)


load_env_file()
VAR_DIR = Path(os.environ.get("MOLAM_VAR_DIR") or PROJECT_ROOT / "var")
#: Written by ``make run`` while its embedded PostgreSQL and Redis are up, so that other
#: commands (``make demo``, ``flask``, ``alembic``) reach the same servers.
EMBEDDED_ENV_FILE = VAR_DIR / "embedded.env"
if env_file() is not None and EMBEDDED_ENV_FILE.is_file():
    load_dotenv(EMBEDDED_ENV_FILE, override=False)

T = TypeVar("T", int, float)

APP_ENVS = ("development", "production", "test")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Variables read outside :func:`load_settings`: by gunicorn.conf.py, by the
#: embedded-server launcher, by this module itself, and by prometheus_client.
PROCESS_VARIABLES = frozenset(
    {"MOLAM_ENV_FILE", "MOLAM_VAR_DIR", "WEB_CONCURRENCY", "GUNICORN_THREADS", "EMBEDDED_REDIS_PORT",
     "PROMETHEUS_MULTIPROC_DIR"}
)


class ConfigError(RuntimeError):
    """Raised when the environment cannot produce a safe configuration."""


def _number(name: str, default: T, cast: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {'an integer' if cast is int else 'a number'}, got {raw!r}") from exc


def _int(name: str, default: int) -> int:
    return _number(name, default, int)


def _float(name: str, default: float) -> float:
    return _number(name, default, float)


@overload
def _str(name: str, default: str) -> str: ...
@overload
def _str(name: str, default: None = None) -> str | None: ...
def _str(name: str, default: str | None = None) -> str | None:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else raw


def redis_url_with_db(url: str, db: int) -> str:
    """Return ``url`` pointing at Redis database ``db`` (path component replaced)."""
    base, _, query = url.partition("?")
    scheme, rest = base.split("://", 1)
    netloc = rest.split("/", 1)[0]
    return f"{scheme}://{netloc}/{db}" + (f"?{query}" if query else "")


@dataclass(frozen=True)
class Settings:
    app_env: str = "development"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/molam_experiments"
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str = "redis://127.0.0.1:6379/1"
    port: int = 3010
    cors_origin: str = "http://localhost:3011"
    molam_id_public_key: str | None = None
    molam_id_issuer: str | None = None
    molam_id_audience: str | None = None
    # Key rotation: a JWKS document on disk and/or at a URL (keys chosen by the token's kid).
    molam_id_jwks_file: Path | None = None
    molam_id_jwks_url: str | None = None
    molam_id_jwks_refresh_s: float = 300.0
    molam_id_jwks_min_refresh_s: float = 30.0
    molam_id_jwks_timeout_s: float = 2.0
    # Bearer token Prometheus must send to GET /metrics (None: the endpoint is open).
    metrics_token: str | None = None
    # Assignment hot path
    assign_rate_limit: str = "120000/minute"
    # Per-caller budgets of the other write and heavy read endpoints.
    track_rate_limit: str = "120000/minute"
    events_batch_rate_limit: str = "6000/minute"
    assignments_batch_rate_limit: str = "6000/minute"
    export_rate_limit: str = "60/minute"
    audit_verify_rate_limit: str = "30/minute"
    # Fraction of the ingestion backlog (stream entries) one caller may occupy.
    ingest_service_share: float = 0.5
    # Stream entries the ingestion backlog may hold before track and batch answer 503
    # (None: services.ingestion.staging.MAX_BACKLOG_ENTRIES).
    ingest_max_backlog_entries: int | None = None
    rate_limit_enabled: bool = True
    # gunicorn worker processes (gunicorn.conf.py reads the same variable): the
    # per-process share of the budget while Redis is unreachable.
    worker_processes: int = 4
    # SIRA schedules (seconds) and daily report time (UTC)
    recompute_interval_s: float = 30.0
    fail_fast_interval_s: float = 60.0
    ingest_drain_interval_s: float = 1.0
    daily_report_hour: int = 6
    daily_report_minute: int = 0
    # SDK change stream: open streams per API process (each holds a server thread),
    # the longest a stream stays open before asking the client to reconnect, heartbeat.
    sdk_stream_slots: int = 1
    sdk_stream_max_seconds: float = 300.0
    sdk_stream_heartbeat_s: float = 15.0
    # Default reporting currency of new experiments (money results are converted into it).
    reporting_currency: str = "EUR"
    # Four-eyes approval for every experiment (not only the categories that always need it).
    approvals_required: bool = False
    # How often beat looks for scheduled starts and stops (seconds).
    schedule_interval_s: float = 15.0
    # A scheduled start or stop that failed is tried again after this long (seconds).
    schedule_retry_interval_s: float = 60.0
    dev_key_dir: Path = field(default=VAR_DIR / "keys")
    # Read replica for results, insights, exports and reports (None: the primary serves them)
    database_replica_url: str | None = None
    # Logs: one JSON object per line, or text for humans
    log_format: str = "json"
    log_level: str = "INFO"
    access_log: bool = True
    # Prometheus exporters of the Celery processes (0 disables one); the API serves /metrics itself
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9540
    beat_metrics_port: int = 9541
    # Migrations run as the schema owner; the processes above connect as DATABASE_URL's
    # least-privilege role (None: migrations use DATABASE_URL too).
    migration_database_url: str | None = None
    # Audit chain: the HMAC key (never stored in the database; required in production), the id
    # recorded with each entry, earlier keys still accepted when verifying ("id:key,id:key"),
    # and how often beat signs a checkpoint of the chain head (seconds).
    audit_hmac_key: str | None = None
    audit_hmac_key_id: str = "k1"
    audit_hmac_previous_keys: str | None = None
    audit_checkpoint_interval_s: float = 300.0

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _flag(name: str, default: bool) -> bool:
    raw = _str(name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def _choice(name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    raw = _str(name, default)
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def normalise_database_url(url: str) -> str:
    """SQLAlchemy needs the psycopg 3 driver spelled out."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def libpq_url(url: str) -> str:
    """The same URL as libpq and psycopg's own ``connect`` spell it (no SQLAlchemy driver)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def load_settings() -> Settings:
    """Settings from the environment (and ``.env``), with the production checks.

    Long but flat: one line per setting, in the order of :class:`Settings`."""
    app_env = _str("APP_ENV", "development")
    if app_env not in APP_ENVS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(APP_ENVS)}, got {app_env!r}")
    defaults = Settings()
    redis_url = _str("REDIS_URL", defaults.redis_url)
    public_key = _str("MOLAM_ID_PUBLIC_KEY")
    if public_key:
        public_key = public_key.replace("\\n", "\n")
    jwks_file, jwks_url = _str("MOLAM_ID_JWKS_FILE"), _str("MOLAM_ID_JWKS_URL")
    if app_env == "production":
        if not (public_key or jwks_file or jwks_url):
            raise ConfigError(
                "MOLAM_ID_PUBLIC_KEY, MOLAM_ID_JWKS_FILE or MOLAM_ID_JWKS_URL is required when APP_ENV=production"
            )
        missing = [name for name in ("MOLAM_ID_ISSUER", "MOLAM_ID_AUDIENCE") if not _str(name)]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} required when APP_ENV=production")
    ingest_service_share = _float("INGEST_SERVICE_SHARE", defaults.ingest_service_share)
    if not 0 < ingest_service_share <= 1:
        raise ConfigError(f"INGEST_SERVICE_SHARE must be in (0, 1], got {ingest_service_share!r}")
    ingest_max_backlog_entries = _int("INGEST_MAX_BACKLOG_ENTRIES", 0) or None
    if ingest_max_backlog_entries is not None and ingest_max_backlog_entries < 1:
        raise ConfigError(f"INGEST_MAX_BACKLOG_ENTRIES must be a positive integer, got {ingest_max_backlog_entries!r}")
    audit_hmac_key = _str("AUDIT_HMAC_KEY")
    if app_env == "production" and (not audit_hmac_key or len(audit_hmac_key) < 32):
        raise ConfigError("AUDIT_HMAC_KEY (at least 32 characters, e.g. `openssl rand -hex 32`) is required when APP_ENV=production")
    reporting_currency = _str("REPORTING_CURRENCY", defaults.reporting_currency)
    from core.money import MONEY_CURRENCIES

    if reporting_currency not in MONEY_CURRENCIES:
        raise ConfigError(f"REPORTING_CURRENCY must be an ISO 4217 currency code with a minor unit, got {reporting_currency!r}")
    return Settings(
        app_env=app_env,
        reporting_currency=reporting_currency,
        database_url=normalise_database_url(_str("DATABASE_URL", defaults.database_url)),
        redis_url=redis_url,
        celery_broker_url=_str("CELERY_BROKER_URL", redis_url_with_db(redis_url, 1)),
        port=_int("PORT", defaults.port),
        cors_origin=_str("CORS_ORIGIN", defaults.cors_origin),
        molam_id_public_key=public_key,
        molam_id_issuer=_str("MOLAM_ID_ISSUER"),
        molam_id_audience=_str("MOLAM_ID_AUDIENCE"),
        molam_id_jwks_file=Path(jwks_file) if jwks_file else None,
        molam_id_jwks_url=jwks_url,
        molam_id_jwks_refresh_s=_float("MOLAM_ID_JWKS_REFRESH", defaults.molam_id_jwks_refresh_s),
        molam_id_jwks_min_refresh_s=_float("MOLAM_ID_JWKS_MIN_REFRESH", defaults.molam_id_jwks_min_refresh_s),
        molam_id_jwks_timeout_s=_float("MOLAM_ID_JWKS_TIMEOUT", defaults.molam_id_jwks_timeout_s),
        metrics_token=_str("METRICS_TOKEN"),
        assign_rate_limit=_str("ASSIGN_RATE_LIMIT", defaults.assign_rate_limit),
        track_rate_limit=_str("TRACK_RATE_LIMIT", defaults.track_rate_limit),
        events_batch_rate_limit=_str("EVENTS_BATCH_RATE_LIMIT", defaults.events_batch_rate_limit),
        assignments_batch_rate_limit=_str("ASSIGNMENTS_BATCH_RATE_LIMIT", defaults.assignments_batch_rate_limit),
        export_rate_limit=_str("EXPORT_RATE_LIMIT", defaults.export_rate_limit),
        audit_verify_rate_limit=_str("AUDIT_VERIFY_RATE_LIMIT", defaults.audit_verify_rate_limit),
        ingest_service_share=ingest_service_share,
        ingest_max_backlog_entries=ingest_max_backlog_entries,
        rate_limit_enabled=_str("RATE_LIMIT_ENABLED", "1") not in ("0", "false", "no"),
        worker_processes=_int("WEB_CONCURRENCY", defaults.worker_processes),
        recompute_interval_s=_float("SIRA_RECOMPUTE_INTERVAL", defaults.recompute_interval_s),
        fail_fast_interval_s=_float("SIRA_FAIL_FAST_INTERVAL", defaults.fail_fast_interval_s),
        ingest_drain_interval_s=_float("INGEST_DRAIN_INTERVAL", defaults.ingest_drain_interval_s),
        daily_report_hour=_int("SIRA_DAILY_REPORT_HOUR", defaults.daily_report_hour),
        daily_report_minute=_int("SIRA_DAILY_REPORT_MINUTE", defaults.daily_report_minute),
        sdk_stream_slots=_int("SDK_STREAM_SLOTS", defaults.sdk_stream_slots),
        sdk_stream_max_seconds=_float("SDK_STREAM_MAX_SECONDS", defaults.sdk_stream_max_seconds),
        sdk_stream_heartbeat_s=_float("SDK_STREAM_HEARTBEAT", defaults.sdk_stream_heartbeat_s),
        database_replica_url=normalise_database_url(replica) if (replica := _str("DATABASE_REPLICA_URL")) else None,
        log_format=_choice("LOG_FORMAT", defaults.log_format, LOG_FORMATS),
        log_level=_choice("LOG_LEVEL", defaults.log_level, LOG_LEVELS, upper=True),
        access_log=_flag("ACCESS_LOG", defaults.access_log),
        metrics_host=_str("METRICS_HOST", defaults.metrics_host),
        worker_metrics_port=_int("WORKER_METRICS_PORT", defaults.worker_metrics_port),
        beat_metrics_port=_int("BEAT_METRICS_PORT", defaults.beat_metrics_port),
        approvals_required=_str("APPROVALS_REQUIRED", "0") not in ("0", "false", "no"),
        schedule_interval_s=_float("SCHEDULE_INTERVAL", defaults.schedule_interval_s),
        schedule_retry_interval_s=_float("SCHEDULE_RETRY_INTERVAL", defaults.schedule_retry_interval_s),
        migration_database_url=normalise_database_url(owner) if (owner := _str("MIGRATION_DATABASE_URL")) else None,
        audit_hmac_key=audit_hmac_key,
        audit_hmac_key_id=_str("AUDIT_HMAC_KEY_ID", defaults.audit_hmac_key_id),
        audit_hmac_previous_keys=_str("AUDIT_HMAC_PREVIOUS_KEYS"),
        audit_checkpoint_interval_s=_float("AUDIT_CHECKPOINT_INTERVAL", defaults.audit_checkpoint_interval_s),
    )

"""Alembic environment: the URL comes from ``-x url=...``, the config, or settings (the owner's URL)."""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from core.config import load_settings, normalise_database_url
from models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    """Migrations run as the schema owner: MIGRATION_DATABASE_URL, else DATABASE_URL."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    if not url:
        settings = load_settings()
        url = settings.migration_database_url or settings.database_url
    return normalise_database_url(url)


def include_object(obj, name, type_, reflected, compare_to):
    return True


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        engine = create_engine(database_url(), poolclass=pool.NullPool)
        with engine.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

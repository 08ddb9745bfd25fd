"""Shared fixtures: a dedicated PostgreSQL database and Redis database for the tests.

``TEST_DATABASE_URL`` (default: ``molam_experiments_test`` on 127.0.0.1:5432) is
created by the tests and rebuilt with ``alembic upgrade head`` once per run;
``TEST_REDIS_URL`` defaults to database 15 on 127.0.0.1:6379 (the broker uses
database 14). When neither local server answers, the embedded ones are started
under ``./var/test``. Each test starts from empty tables and an empty Redis database.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

# A developer's .env must not leak into the tests (nor into the processes they start).
os.environ["MOLAM_ENV_FILE"] = ""

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.config import PROJECT_ROOT, Settings, libpq_url, normalise_database_url, redis_url_with_db
from scripts.db_roles import provision, url_for_role
from scripts.embedded import postgres_answers, redis_answers, start_postgres, start_redis
from tests.support.api import TEST_AUDIENCE, TEST_ISSUER, experiment_body
from tests.support.database import create_database, roles_for

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/molam_experiments_test"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"
#: The tests' audit HMAC key (processes the tests start get it through their environment).
TEST_AUDIT_HMAC_KEY = "test-audit-hmac-key-0123456789abcdef0123456789abcdef"
TEST_AUDIT_HMAC_KEY_ID = "test"


@pytest.fixture(scope="session")
def service_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    database_url = os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    redis_url = os.environ.get("TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    started: list[Any] = []
    if not postgres_answers(database_url):
        server, database_url = start_postgres(PROJECT_ROOT / "var" / "test" / "pg", "molam_experiments_test")
        started.append(server)
    if not redis_answers(redis_url):
        process, base = start_redis(PROJECT_ROOT / "var" / "test" / "redis", 6391)
        redis_url = redis_url_with_db(base, 15)
        started.append(process)
    yield normalise_database_url(database_url), redis_url
    for handle in started:
        if hasattr(handle, "terminate"):
            handle.terminate()


@pytest.fixture(scope="session")
def key_pair() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private_pem, public_pem


@pytest.fixture(scope="session")
def admin_database_url(service_urls: tuple[str, str]) -> str:
    """The test database as the superuser of ``TEST_DATABASE_URL``: creates it and its roles."""
    return service_urls[0]


@pytest.fixture(scope="session")
def settings(service_urls: tuple[str, str], key_pair: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The application connects as the least-privilege role; migrations run as the owner."""
    admin_url, redis_url = service_urls
    owner, app_role = roles_for(admin_url)
    return Settings(
        app_env="test",
        database_url=url_for_role(admin_url, app_role),
        migration_database_url=url_for_role(admin_url, owner),
        audit_hmac_key=TEST_AUDIT_HMAC_KEY,
        audit_hmac_key_id=TEST_AUDIT_HMAC_KEY_ID,
        redis_url=redis_url,
        celery_broker_url=redis_url_with_db(redis_url, 14),
        molam_id_public_key=key_pair[1],
        molam_id_issuer=TEST_ISSUER,
        molam_id_audience=TEST_AUDIENCE,
        dev_key_dir=tmp_path_factory.mktemp("keys"),
    )


@pytest.fixture(scope="session")
def migrated_database(settings: Settings, admin_database_url: str) -> str:
    """Create the database and its roles, migrate as the owner; returns the superuser's URL
    (for tests that set up or inspect rows beyond what the application role may do)."""
    from alembic import command
    from alembic.config import Config

    create_database(admin_database_url)
    owner, app_role = roles_for(admin_database_url)
    provision(admin_database_url, owner=owner, app=app_role)
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = settings.migration_database_url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")
    return admin_database_url


@pytest.fixture(scope="session")
def app(settings: Settings, migrated_database: str):
    from api import create_app

    application = create_app(settings)
    application.config["TESTING"] = True
    return application


def _truncate_all(database_url: str) -> None:
    from models import Base

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        # The audit table's triggers forbid TRUNCATE; replica mode lets the tests reset it.
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty tables and Redis before every test that touches the services."""
    if "migrated_database" not in request.fixturenames and "app" not in request.fixturenames:
        yield
        return
    settings: Settings = request.getfixturevalue("settings")
    database_url = request.getfixturevalue("migrated_database")
    _truncate_all(database_url)
    from core.redis import get_redis

    get_redis(settings.redis_url).flushdb()
    get_redis(settings.celery_broker_url).flushdb()
    yield


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def make_token(key_pair: tuple[str, str]) -> Callable[..., str]:
    private_pem = key_pair[0]

    def mint(
        roles: list[str] | str = "ops_admin",
        sub: str | None = None,
        *,
        ttl_s: int = 3600,
        issuer: str | None = TEST_ISSUER,
        audience: str | None = TEST_AUDIENCE,
        **extra: Any,
    ) -> str:
        roles = [roles] if isinstance(roles, str) else roles
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub or f"user-{roles[0] if roles else 'none'}", "roles": roles, "iat": now, "exp": now + ttl_s}
        if issuer:
            claims["iss"] = issuer
        if audience:
            claims["aud"] = audience
        claims.update(extra)
        return jwt.encode(claims, private_pem, algorithm="RS256")

    return mint


@pytest.fixture(scope="session")
def auth(make_token: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """``auth("marketing")`` → request headers carrying a valid token for that role."""

    def headers(roles: list[str] | str = "ops_admin", sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(roles, sub)}"}

    return headers


@pytest.fixture
def create_experiment(client, auth) -> Callable[..., dict[str, Any]]:
    """Create (and optionally start) an experiment through the API; returns its JSON."""

    def create(start: bool = False, **overrides: Any) -> dict[str, Any]:
        response = client.post("/api/experiments", json=experiment_body(**overrides), headers=auth("ops_admin"))
        assert response.status_code == 201, response.get_json()
        experiment = response.get_json()
        if start:
            started = client.post(f"/api/experiments/{experiment['id']}/start", headers=auth("ops_admin"))
            assert started.status_code == 200, started.get_json()
            experiment = started.get_json()
        return experiment

    return create


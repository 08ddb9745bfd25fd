from __future__ import annotations

import subprocess
import sys

import jwt
import pytest

from core.config import PROJECT_ROOT, ConfigError, load_settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("APP_ENV", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PORT", "MOLAM_ID_PUBLIC_KEY", "MOLAM_ID_ISSUER", "MOLAM_ID_AUDIENCE",
                 "AUDIT_HMAC_KEY", "AUDIT_HMAC_KEY_ID", "AUDIT_HMAC_PREVIOUS_KEYS", "MIGRATION_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    settings = load_settings()
    assert settings.port == 3010 and settings.app_env == "development"
    assert settings.celery_broker_url == "redis://127.0.0.1:6379/1"


def test_broker_defaults_to_redis_on_its_own_database(clean_env):
    clean_env.setenv("REDIS_URL", "redis://cache.internal:6380/3")
    assert load_settings().celery_broker_url == "redis://cache.internal:6380/1"


def test_database_url_gets_the_psycopg_driver(clean_env):
    clean_env.setenv("DATABASE_URL", "postgresql://u@db/molam")
    assert load_settings().database_url == "postgresql+psycopg://u@db/molam"


def test_production_requires_a_public_key(clean_env):
    clean_env.setenv("APP_ENV", "production")
    with pytest.raises(ConfigError, match="MOLAM_ID_PUBLIC_KEY"):
        load_settings()


@pytest.mark.parametrize("key", [None, "too-short"])
def test_production_requires_an_audit_hmac_key(clean_env, key):
    clean_env.setenv("APP_ENV", "production")
    clean_env.setenv("MOLAM_ID_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----")
    clean_env.setenv("MOLAM_ID_ISSUER", "https://id.molam.example")
    clean_env.setenv("MOLAM_ID_AUDIENCE", "molam-experiments")
    if key:
        clean_env.setenv("AUDIT_HMAC_KEY", key)
    with pytest.raises(ConfigError, match="AUDIT_HMAC_KEY"):
        load_settings()
    clean_env.setenv("AUDIT_HMAC_KEY", "f" * 64)
    clean_env.setenv("MIGRATION_DATABASE_URL", "postgresql://owner@db/molam")
    settings = load_settings()
    assert settings.audit_hmac_key == "f" * 64 and settings.audit_hmac_key_id == "k1"
    assert settings.migration_database_url == "postgresql+psycopg://owner@db/molam"


@pytest.mark.parametrize("name,value", [("APP_ENV", "staging"), ("PORT", "eighty")])
def test_bad_values_are_refused(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_production_app_refuses_to_start_without_a_key(tmp_path):
    env = {"APP_ENV": "production", "PATH": "/usr/bin:/bin", "MOLAM_VAR_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "from api import create_app; create_app()"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode != 0 and "MOLAM_ID_PUBLIC_KEY" in result.stderr


def test_dev_token_cli_mints_a_token_the_app_accepts(tmp_path, settings):
    env = {
        "APP_ENV": "development",
        "PATH": "/usr/bin:/bin",
        "MOLAM_VAR_DIR": str(tmp_path),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "api", "dev-token", "--role", "marketing", "--sub", "amina"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True,
    )
    token = result.stdout.strip()
    claims = jwt.decode(token, (tmp_path / "keys" / "dev_public.pem").read_text(), algorithms=["RS256"])
    assert claims["sub"] == "amina" and claims["roles"] == ["marketing"] and claims["exp"] > claims["iat"]


def test_reporting_currency_defaults_to_eur_and_must_be_money(clean_env):
    clean_env.delenv("REPORTING_CURRENCY", raising=False)
    assert load_settings().reporting_currency == "EUR"
    clean_env.setenv("REPORTING_CURRENCY", "XOF")
    assert load_settings().reporting_currency == "XOF"
    for bad in ("xof", "XAU", "ZZZ"):
        clean_env.setenv("REPORTING_CURRENCY", bad)
        with pytest.raises(ConfigError, match="REPORTING_CURRENCY"):
            load_settings()

"""Flask application factory for the Molam Experiments API."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click
from flask import Flask, jsonify
from flask_cors import CORS
from flask_smorest import Api

from api.observability import init_metrics, init_request_logging
from core import db
from core.config import Settings, load_settings
from core.errors import DomainError, error_body
from services.experiments import audit as audit_service

from . import context, input_guard, openapi_ui
from .auth import TokenVerifier, key_ring, mint_dev_token
from .headers import init_security_headers
from .ratelimit import init_rate_limiting

log = logging.getLogger(__name__)


class MolamApi(Api):
    """flask-smorest's Api whose error payloads always carry a ``message``.

    Validation errors (422) come with ``errors`` only; the message names the
    offending fields so a client reading just ``message`` still knows what to fix.
    """

    def handle_http_exception(self, error):
        payload, status, headers = super().handle_http_exception(error)
        if "message" not in payload:
            errors = payload.get("errors") or {}
            fields = sorted({name for location in errors.values() if isinstance(location, dict) for name in location})
            payload["message"] = (
                f"invalid request: {', '.join(fields)}" if fields else getattr(error, "description", None) or payload["status"]
            )
        return payload, status, headers


class MolamFlask(Flask):
    """Flask with :meth:`ensure_sync` answered once per callable instead of on every call.

    Flask asks ``inspect.iscoroutinefunction`` of every hook, view and error handler it
    calls, on every request (about twenty per request here); the answer for a given
    callable never changes, so it is remembered.
    """

    #: Enough for every view, hook and handler of the app; past it, nothing more is remembered.
    SYNC_CACHE_SIZE = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_callables: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync_callables[func]
        except KeyError:
            pass
        except TypeError:  # an unhashable callable
            return super().ensure_sync(func)
        sync = super().ensure_sync(func)
        if len(self._sync_callables) < self.SYNC_CACHE_SIZE:
            self._sync_callables[func] = sync
        return sync


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = MolamFlask(__name__)
    app.config.update(_openapi_config())
    app.extensions["settings"] = settings
    init_request_logging(app, access_log_enabled=settings.access_log)
    input_guard.init_input_guard(app)
    init_security_headers(app)
    app.extensions["token_verifier"] = TokenVerifier(
        key_ring(settings), settings.molam_id_issuer, settings.molam_id_audience
    )
    db.init_engine(settings.database_url)
    db.init_read_engine(settings.database_replica_url)
    audit_service.configure_keys(audit_service.keys_from_settings(settings))
    CORS(app, origins=[o.strip() for o in settings.cors_origin.split(",")], expose_headers=["X-Pagination", "X-Request-ID"])

    api = MolamApi(app)
    _register_blueprints(app, api, settings)

    _register_error_handlers(app, api)
    init_rate_limiting(app, settings)
    init_metrics(app, settings.metrics_token)
    app.teardown_appcontext(context.close_session)

    @app.after_request
    def add_request_id(response):
        response.headers["X-Request-ID"] = context.request_id()
        return response

    _register_cli(app)
    return app


def _openapi_config() -> dict[str, Any]:
    """flask-smorest's settings: the OpenAPI document and its UIs (served from local assets)."""
    return dict(
        API_TITLE="Molam Experiments (Brique 147) with SIRA",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=openapi_ui.SWAGGER_UI_URL,
        OPENAPI_SWAGGER_UI_CONFIG=openapi_ui.SWAGGER_UI_CONFIG,
        OPENAPI_REDOC_PATH="/redoc",
        OPENAPI_REDOC_URL=openapi_ui.REDOC_URL,
        API_SPEC_OPTIONS={
            "info": {"description": input_guard.OPENAPI_DESCRIPTION},
            "components": {
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
            },
            "security": [{"bearerAuth": []}],
        },
        MAX_CONTENT_LENGTH=8 * 1024 * 1024,
    )


def _register_blueprints(app: Flask, api: Api, settings: Settings) -> None:
    """Every resource, in the order of the OpenAPI document; then the CLI commands."""
    from . import assignments, audit, experiments, export, health

    api.register_blueprint(experiments.blp)
    api.register_blueprint(assignments.blp)
    api.register_blueprint(assignments.batch_blp)
    api.register_blueprint(audit.blp)
    api.register_blueprint(export.blp)
    from . import results, variants

    api.register_blueprint(results.blp)
    api.register_blueprint(results.reports_blp)
    api.register_blueprint(variants.blp)
    app.register_blueprint(health.blp)
    openapi_ui.init_openapi_ui(app)
    from . import bandit_history, dashboard

    api.register_blueprint(bandit_history.blp)
    app.register_blueprint(dashboard.blp)
    from . import cli_audit, cli_demo, cli_reconcile, events, fx_rates, sdk

    api.register_blueprint(events.blp)
    api.register_blueprint(fx_rates.blp)
    api.register_blueprint(sdk.blp)
    sdk.init_sdk(app, settings)
    from . import approvals, holdouts, layers, planning, schedules

    api.register_blueprint(layers.blp)
    api.register_blueprint(holdouts.blp)
    api.register_blueprint(approvals.blp)
    api.register_blueprint(schedules.blp)
    api.register_blueprint(planning.blp)
    cli_reconcile.register(app)
    cli_audit.register(app)
    cli_demo.register(app)


def _register_error_handlers(app: Flask, api: Api) -> None:
    @app.errorhandler(DomainError)
    def handle_domain_error(error: DomainError):
        return jsonify(error_body(error.status, error.message, error.errors)), error.status, error.headers

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        from sqlalchemy.exc import InterfaceError, OperationalError

        if isinstance(error, (OperationalError, InterfaceError)):
            log.warning("database unavailable: %s", error)
            return (
                jsonify(error_body(503, "database unavailable; retry shortly")),
                503,
                {"Retry-After": "2"},
            )
        from werkzeug.exceptions import HTTPException

        if isinstance(error, HTTPException):
            return api.handle_http_exception(error)
        log.exception("unhandled error")
        return jsonify(error_body(500, "internal error")), 500


def _register_cli(app: Flask) -> None:
    @app.cli.command("dev-token")
    @click.option("--role", "roles", required=True, multiple=True, help="Role claim (repeatable).")
    @click.option("--sub", default=None, help="Subject (Molam ID); defaults to dev-<role>.")
    @click.option("--ttl", default=24 * 3600, show_default=True, help="Lifetime in seconds.")
    def dev_token(roles: tuple[str, ...], sub: str | None, ttl: int) -> None:
        """Mint a development token signed with the local key pair under ./var/keys."""
        settings: Settings = app.extensions["settings"]
        token = mint_dev_token(settings, roles[0], sub=sub, ttl_s=ttl, extra_roles=roles[1:])
        click.echo(token)

"""Domain errors carry their HTTP status; one handler renders them."""
from __future__ import annotations

from http import HTTPStatus
from typing import Any


def error_body(status: int, message: str, errors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one JSON error envelope: ``{code, status, message[, errors]}`` (flask-smorest's shape)."""
    body: dict[str, Any] = {"code": status, "status": HTTPStatus(status).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return body


class DomainError(Exception):
    status = 400

    def __init__(self, message: str, *, errors: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.headers = headers or {}


class Forbidden(DomainError):
    """The caller is authenticated and has the role, but this particular act is not theirs."""

    status = 403


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    status = 409


class Invalid(DomainError):
    """Semantic validation failure (same payload shape as schema errors)."""

    status = 422


class RateLimited(DomainError):
    """The caller's request budget is spent; ``Retry-After`` says when the window resets."""

    status = 429

    def __init__(self, description: str, retry_after_s: int):
        super().__init__(
            f"rate limit of {description} per caller exceeded; retry after {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


class BacklogShareExceeded(DomainError):
    """The caller's share of the ingestion backlog is full; other callers are still accepted."""

    status = 429

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Unavailable(DomainError):
    """A dependency is down; the client should retry later."""

    status = 503

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any):
        headers = {"Retry-After": str(retry_after)}
        headers.update(kwargs.pop("headers", None) or {})
        super().__init__(message, headers=headers, **kwargs)

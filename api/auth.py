"""Molam ID bearer tokens: RS256 only, roles from the ``roles`` claim."""
from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import current_app, g, request
from flask_smorest import abort

from core import rbac
from core.config import Settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    sub: str
    roles: tuple[str, ...]


def _generate_dev_keypair(key_dir: Path) -> None:
    key_dir.mkdir(parents=True, exist_ok=True)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tmp = key_dir / "dev_private.pem.tmp"
    tmp.write_bytes(private_pem)
    tmp.chmod(0o600)
    (key_dir / "dev_public.pem").write_bytes(public_pem)
    tmp.rename(key_dir / "dev_private.pem")


def dev_key_paths(settings: Settings) -> tuple[Path, Path]:
    return settings.dev_key_dir / "dev_private.pem", settings.dev_key_dir / "dev_public.pem"


def resolve_public_key(settings: Settings) -> str:
    """The verification key: configured, or (outside production) the local dev key pair."""
    if settings.molam_id_public_key:
        return settings.molam_id_public_key
    if settings.is_production:
        raise RuntimeError("MOLAM_ID_PUBLIC_KEY is required in production")
    private_path, public_path = dev_key_paths(settings)
    if not private_path.exists():
        _generate_dev_keypair(settings.dev_key_dir)
    return public_path.read_text()


def mint_dev_token(
    settings: Settings, role: str, sub: str | None = None, ttl_s: int = 24 * 3600, extra_roles: tuple[str, ...] = ()
) -> str:
    """Sign a development token with the local key pair (never available in production)."""
    if settings.is_production:
        raise RuntimeError("dev tokens are not available in production")
    if settings.molam_id_public_key:
        raise RuntimeError("MOLAM_ID_PUBLIC_KEY is set: tokens must come from Molam ID")
    resolve_public_key(settings)
    private_path, _ = dev_key_paths(settings)
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub or f"dev-{role}",
        "roles": [role, *extra_roles],
        "iat": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    if settings.molam_id_issuer:
        claims["iss"] = settings.molam_id_issuer
    if settings.molam_id_audience:
        claims["aud"] = settings.molam_id_audience
    return jwt.encode(claims, private_path.read_text(), algorithm="RS256")


VERIFIED_TOKEN_CACHE_SIZE = 4096


class TokenVerifier:
    def __init__(self, public_key_pem: str, issuer: str | None, audience: str | None):
        self._key = serialization.load_pem_public_key(public_key_pem.encode())
        self._issuer = issuer
        self._audience = audience
        # Verified tokens, until their exp: services send the same token on every
        # assign call, and an RS256 check costs more than the rest of a cached assign.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        principal, expires_at = self._verify(token)
        if len(self._verified) >= VERIFIED_TOKEN_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, expires_at)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        options = {"require": ["exp", "sub"], "verify_aud": self._audience is not None}
        claims = jwt.decode(
            token,
            self._key,
            algorithms=["RS256"],
            issuer=self._issuer,
            audience=self._audience,
            options=options,
            leeway=10,
        )
        roles = claims.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise jwt.InvalidTokenError("roles claim must be a non-empty list of strings")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise jwt.InvalidTokenError("sub claim must be a non-empty string")
        return Principal(sub=claims["sub"], roles=tuple(roles)), float(claims["exp"])


def authenticate() -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        abort(401, message="missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = current_app.extensions["token_verifier"]
    try:
        return verifier.verify(token.strip())
    except jwt.ExpiredSignatureError:
        abort(401, message="token expired", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    except jwt.PyJWTError as exc:
        abort(401, message=f"invalid token: {exc}", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def require(action: str) -> Callable[[F], F]:
    """Authenticate the caller and check the RBAC matrix for ``action``."""
    if action not in rbac.MATRIX:
        raise KeyError(f"unknown RBAC action {action!r}")

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = authenticate()
            if not rbac.allowed(action, principal.roles):
                abort(403, message=f"role(s) {', '.join(principal.roles)} may not {action}")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator

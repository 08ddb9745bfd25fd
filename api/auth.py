"""Molam ID bearer tokens: RS256 only, roles from the ``roles`` claim."""
from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import current_app, g, request
from flask_smorest import abort
from jwt.types import Options

from core import rbac
from core.config import Settings

from .signing_keys import JwksFile, JwksUrl, KeyRing

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    sub: str
    roles: tuple[str, ...]


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only from the first byte (no chmod window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # the umask may have removed bits, never added any; be exact


def _generate_dev_keypair(key_dir: Path) -> None:
    """A development key pair: the private key 0600 in a 0700 directory."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tmp = key_dir / f"dev_private.pem.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    _write_private(tmp, private_pem)
    (key_dir / "dev_public.pem").write_bytes(public_pem)
    tmp.rename(key_dir / "dev_private.pem")


def dev_key_paths(settings: Settings) -> tuple[Path, Path]:
    return settings.dev_key_dir / "dev_private.pem", settings.dev_key_dir / "dev_public.pem"


def resolve_public_key(settings: Settings) -> str:
    """The PEM verification key: configured, or (outside production) the local dev key pair."""
    if settings.molam_id_public_key:
        return settings.molam_id_public_key
    if settings.is_production:
        raise RuntimeError("MOLAM_ID_PUBLIC_KEY is required in production")
    private_path, public_path = dev_key_paths(settings)
    if not private_path.exists():
        _generate_dev_keypair(settings.dev_key_dir)
    else:
        _tighten(settings.dev_key_dir, private_path)
    return public_path.read_text()


def _tighten(key_dir: Path, private_path: Path) -> None:
    """A key pair made before the 0600/0700 rule (or copied in loosely) is brought to it."""
    for path, mode in ((key_dir, 0o700), (private_path, 0o600)):
        try:
            if path.stat().st_mode & 0o777 != mode:
                path.chmod(mode)
        except OSError as exc:
            log.warning("could not restrict %s to %o: %s", path, mode, exc)


def key_ring(settings: Settings) -> KeyRing:
    """Every verification key the settings name (the dev key pair when they name none, outside production).

    Production also needs the issuer and the audience: a token Molam ID signed for
    another product must not open this one.
    """
    if settings.is_production:
        missing = [name for name, value in (("MOLAM_ID_ISSUER", settings.molam_id_issuer),
                                             ("MOLAM_ID_AUDIENCE", settings.molam_id_audience)) if not value]
        if missing:
            raise RuntimeError(f"{' and '.join(missing)} required in production")
    ring = KeyRing()
    if settings.molam_id_jwks_file is not None:
        ring.file = JwksFile(settings.molam_id_jwks_file)
    if settings.molam_id_jwks_url:
        ring.url = JwksUrl(
            settings.molam_id_jwks_url,
            refresh_s=settings.molam_id_jwks_refresh_s,
            min_refresh_s=settings.molam_id_jwks_min_refresh_s,
            timeout_s=settings.molam_id_jwks_timeout_s,
        )
    if settings.molam_id_public_key or (ring.file is None and ring.url is None):
        ring.pem = KeyRing.from_pem(resolve_public_key(settings)).pem
    return ring


def mint_dev_token(
    settings: Settings, role: str, sub: str | None = None, ttl_s: int = 24 * 3600, extra_roles: tuple[str, ...] = ()
) -> str:
    """Sign a development token with the local key pair (never available in production)."""
    if settings.is_production:
        raise RuntimeError("dev tokens are not available in production")
    if settings.molam_id_public_key or settings.molam_id_jwks_file or settings.molam_id_jwks_url:
        raise RuntimeError("Molam ID keys are configured: tokens must come from Molam ID")
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
#: Headers that point at or carry a key: honouring one would let the token choose its own key.
REFUSED_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "crit"})
#: Registered time claims: NumericDate (RFC 7519), never a string or a boolean.
TIME_CLAIMS = ("exp", "nbf", "iat")


class TokenRefused(Exception):
    """A token was refused; ``reason`` is what the client is told (never the library's message)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TokenVerifier:
    def __init__(self, keys: KeyRing | str, issuer: str | None, audience: str | None):
        self._keys = KeyRing.from_pem(keys) if isinstance(keys, str) else keys
        self._issuer = issuer
        self._audience = audience
        # Verified tokens, until their exp: services send the same token on every
        # assign call, and an RS256 check costs more than the rest of a cached assign.
        # Forgotten when a JWKS's keys change, so a key dropped from the set stops
        # verifying its tokens at once.
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._generation = self._keys.generation

    def verify(self, token: str) -> Principal:
        """The token's principal; raises :class:`TokenRefused` with a generic reason."""
        generation = self._keys.generation
        if generation != self._generation:
            self._verified.clear()
            self._generation = generation
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        try:
            principal, expires_at = self._verify(token)
        except jwt.ExpiredSignatureError as exc:
            raise TokenRefused("token expired") from exc
        except jwt.PyJWTError as exc:
            log.info("token refused: %s", exc)
            raise TokenRefused("invalid token") from exc
        if len(self._verified) >= VERIFIED_TOKEN_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, expires_at)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "RS256":
            raise jwt.InvalidAlgorithmError("only RS256 is accepted")
        if REFUSED_HEADERS & header.keys():
            raise jwt.InvalidTokenError("key-bearing or critical headers are not accepted")
        required = ["exp", "sub"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        options: Options = {"require": required, "verify_aud": self._audience is not None}
        claims = jwt.decode(
            token,
            self._keys.key_for(header),
            algorithms=["RS256"],
            issuer=self._issuer,
            audience=self._audience,
            options=options,
            leeway=10,
        )
        for name in TIME_CLAIMS:
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise jwt.InvalidTokenError(f"{name} must be a NumericDate")
        roles = claims.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise jwt.InvalidTokenError("roles claim must be a non-empty list of strings")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise jwt.InvalidTokenError("sub claim must be a non-empty string")
        return Principal(sub=claims["sub"], roles=tuple(roles)), float(claims["exp"])


def bearer_token() -> str | None:
    """The request's bearer token, or None when the Authorization header carries none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(message: str, challenge: str) -> NoReturn:
    abort(401, message=message, headers={"WWW-Authenticate": challenge})
    raise AssertionError("abort() raises")


def authenticate() -> Principal:
    token = bearer_token()
    if token is None:
        _unauthorized("missing bearer token", "Bearer")
    verifier: TokenVerifier = current_app.extensions["token_verifier"]
    try:
        return verifier.verify(token)
    except TokenRefused as refused:
        _unauthorized(refused.reason, 'Bearer error="invalid_token"')


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

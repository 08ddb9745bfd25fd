"""The keys Molam ID signs tokens with: a PEM public key, a JWKS file, a JWKS URL.

Key rotation needs two keys valid at once: the identity provider publishes the new
key next to the old one in its JWKS document, starts signing with it (tokens name
it in their ``kid`` header), and drops the old one once its tokens have expired.
So a token's key is chosen by ``kid``:

* a ``kid`` found in the JWKS file or the JWKS URL's document selects that key;
* an unknown ``kid`` makes the file be re-read (when it changed on disk) and the URL
  be fetched again, at most once per ``MOLAM_ID_JWKS_MIN_REFRESH`` seconds, so a
  stream of tokens with made-up ``kid`` values cannot turn into a stream of fetches;
* the URL's document is otherwise refreshed every ``MOLAM_ID_JWKS_REFRESH`` seconds
  (PyJWT's :class:`jwt.PyJWKClient` keeps it), each fetch bounded by
  ``MOLAM_ID_JWKS_TIMEOUT``; when a fetch fails the last good document stays in use;
* a token without ``kid`` uses the PEM key (``MOLAM_ID_PUBLIC_KEY``) when one is
  configured, else the JWKS key when the configured sets hold exactly one key, and is
  refused otherwise (which key it meant cannot be told);
* a ``kid`` that no JWKS knows falls back to the PEM key when there is one, so that
  moving from a single PEM key to a JWKS needs no flag day.

Only RSA keys meant for signatures (``use`` absent or ``sig``, ``alg`` absent or
``RS256``) are ever used.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

log = logging.getLogger(__name__)


class UnknownKey(jwt.InvalidTokenError):
    """No configured key matches the token's header."""


def _fingerprint(keys: dict[str | None, RSAPublicKey]) -> frozenset[tuple[str | None, int, int]]:
    return frozenset((kid, key.public_numbers().n, key.public_numbers().e) for kid, key in keys.items())


def _usable_keys(document: Any) -> dict[str | None, RSAPublicKey]:
    """The RS256 signing keys of a JWKS document, by ``kid`` (keys without one under ``None``)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS document is a JSON object with a 'keys' list")
    keys: dict[str | None, RSAPublicKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        try:
            key = jwt.PyJWK(entry, algorithm="RS256").key
        except jwt.PyJWTError as exc:
            log.warning("skipping an unusable JWKS key %r: %s", entry.get("kid"), exc)
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) and kid else None] = key
    return keys


class JwksFile:
    """A JWKS document on disk, re-read when its modification time changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.keys: dict[str | None, RSAPublicKey] = {}
        #: Bumped whenever the set of keys changes (tokens verified before may no longer be valid).
        self.generation = 0
        self.reload()

    def reload(self) -> bool:
        """Read the file again if it changed; True when the keys were replaced."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            keys = _usable_keys(json.loads(self.path.read_text()))
        except (OSError, ValueError) as exc:
            if self._stamp is None:
                raise RuntimeError(f"MOLAM_ID_JWKS_FILE {self.path} is not a readable JWKS document: {exc}") from exc
            log.warning("keeping the previous keys of %s: %s", self.path, exc)
            return False
        if _fingerprint(keys) != _fingerprint(self.keys):
            self.generation += 1
        self._stamp, self.keys = stamp, keys
        return True


class JwksUrl:
    """A JWKS document served over HTTP(S), fetched by :class:`jwt.PyJWKClient`.

    PyJWKClient does the fetch (http/https only, no redirects, the timeout) and times
    the document's lifespan; the keys are taken from the fetched document with the
    same rules as a file's. Fetches are attempted at most once per ``min_refresh_s``
    whatever triggers them, and a failed one keeps the keys already held.
    """

    def __init__(self, url: str, *, refresh_s: float, min_refresh_s: float, timeout_s: float):
        self.client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=max(refresh_s, 1.0), timeout=timeout_s, cooldown_duration=min_refresh_s
        )
        self.min_refresh_s = min_refresh_s
        self.keys: dict[str | None, RSAPublicKey] = {}
        self.generation = 0
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        if not self._try():  # the provider may come up after us: tokens are refused until it answers
            log.warning("JWKS URL %s unavailable at start: tokens are refused until it answers", url)

    def _stale(self) -> bool:
        cache = self.client.jwk_set_cache
        return not self.keys or cache is None or cache.get() is None

    def current(self) -> dict[str | None, RSAPublicKey]:
        """The keys, fetched again once their lifespan is over (a failed fetch keeps the old keys)."""
        if self._stale() and self._may_try():
            self._try()
        return self.keys

    def refresh_for_unknown_kid(self) -> bool:
        """Fetch again because a token names a key we lack; False when it is too soon to ask."""
        return self._may_try() and self._try()

    def _may_try(self) -> bool:
        return time.monotonic() - self._last_attempt >= self.min_refresh_s

    def _try(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return False  # another thread is fetching; this token uses the keys we have
        try:
            if not self._may_try():
                return False
            self._last_attempt = time.monotonic()
            keys = _usable_keys(self.client.fetch_data())
            if _fingerprint(keys) != _fingerprint(self.keys):
                self.generation += 1
            self.keys = keys
            return True
        except (jwt.PyJWTError, ValueError) as exc:  # unreachable, not JSON, no usable key
            log.warning("JWKS fetch from %s failed, keeping the previous keys: %s", self.client.uri, exc)
            return False
        finally:
            self._lock.release()


@dataclass
class KeyRing:
    """Every configured verification key, and the rule that picks one for a token."""

    pem: RSAPublicKey | None = None
    file: JwksFile | None = None
    url: JwksUrl | None = None

    @property
    def generation(self) -> tuple[int, int]:
        """Changes whenever a JWKS's keys change: verified tokens are then checked again."""
        return (self.file.generation if self.file else 0, self.url.generation if self.url else 0)

    @classmethod
    def from_pem(cls, public_key_pem: str) -> KeyRing:
        key = serialization.load_pem_public_key(public_key_pem.encode())
        if not isinstance(key, RSAPublicKey):
            raise RuntimeError("MOLAM_ID_PUBLIC_KEY must be an RSA public key")
        return cls(pem=key)

    def _jwks_keys(self) -> dict[str | None, RSAPublicKey]:
        keys: dict[str | None, RSAPublicKey] = {}
        if self.file is not None:
            keys.update(self.file.keys)
        if self.url is not None:
            keys.update(self.url.current())
        return keys

    def key_for(self, header: dict[str, Any]) -> RSAPublicKey:
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise UnknownKey("kid must be a string")
        if kid is None:
            if self.pem is not None:
                return self.pem
            keys = self._jwks_keys()
            if len(keys) == 1:
                return next(iter(keys.values()))
            raise UnknownKey("a token without kid, and several keys could have signed it")
        keys = self._jwks_keys()
        if kid in keys:
            return keys[kid]
        refreshed = False
        if self.file is not None:
            refreshed = self.file.reload() or refreshed
        if self.url is not None:
            refreshed = self.url.refresh_for_unknown_kid() or refreshed
        if refreshed:
            keys = self._jwks_keys()
            if kid in keys:
                return keys[kid]
        if self.pem is not None:
            return self.pem
        raise UnknownKey("no key with this kid")

"""Verification keys (PEM, JWKS file, JWKS URL with rotation), production checks and 401 bodies."""
from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from api.auth import TokenRefused, TokenVerifier, key_ring, mint_dev_token
from core.config import ConfigError, Settings, load_settings
from tests.support.api import TEST_AUDIENCE, TEST_ISSUER

GENERIC_REASONS = {"invalid token", "token expired", "missing bearer token"}


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys():
    return {"a": _key(), "b": _key(), "c": _key()}


def _jwk(private, kid: str | None, **extra) -> dict:
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def _token(private, kid: str | None = None, *, headers: dict | None = None, **overrides) -> str:
    now = int(time.time())
    claims = {"sub": "svc-pay", "roles": ["pay_module"], "iat": now, "exp": now + 600, "iss": TEST_ISSUER, "aud": TEST_AUDIENCE}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(claims, private, algorithm="RS256", headers=header or None)


def _verifier(tmp_path: Path, **settings) -> TokenVerifier:
    base = Settings(app_env="test", molam_id_issuer=TEST_ISSUER, molam_id_audience=TEST_AUDIENCE, dev_key_dir=tmp_path / "keys")
    configured = base.with_overrides(**settings)
    return TokenVerifier(key_ring(configured), configured.molam_id_issuer, configured.molam_id_audience)


def _write_jwks(path: Path, *jwks: dict) -> None:
    path.write_text(json.dumps({"keys": list(jwks)}))


def _refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(token)
    return refused.value.reason


# --- production ------------------------------------------------------------------------


@pytest.fixture
def production_env(monkeypatch, key_pair):
    for name in ("MOLAM_ID_PUBLIC_KEY", "MOLAM_ID_ISSUER", "MOLAM_ID_AUDIENCE", "MOLAM_ID_JWKS_FILE", "MOLAM_ID_JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("MOLAM_ID_PUBLIC_KEY", key_pair[1])
    monkeypatch.setenv("AUDIT_HMAC_KEY", "a" * 64)  # production's other requirement
    return monkeypatch


@pytest.mark.parametrize("missing", ["MOLAM_ID_ISSUER", "MOLAM_ID_AUDIENCE"])
def test_production_requires_issuer_and_audience(production_env, missing):
    production_env.setenv("MOLAM_ID_ISSUER", TEST_ISSUER)
    production_env.setenv("MOLAM_ID_AUDIENCE", TEST_AUDIENCE)
    assert load_settings().is_production
    production_env.delenv(missing)
    with pytest.raises(ConfigError, match=missing):
        load_settings()


def test_production_accepts_a_jwks_file_instead_of_a_pem_key(production_env, tmp_path, keys):
    production_env.delenv("MOLAM_ID_PUBLIC_KEY")
    production_env.setenv("MOLAM_ID_ISSUER", TEST_ISSUER)
    production_env.setenv("MOLAM_ID_AUDIENCE", TEST_AUDIENCE)
    with pytest.raises(ConfigError, match="MOLAM_ID_JWKS_FILE"):
        load_settings()
    _write_jwks(tmp_path / "jwks.json", _jwk(keys["a"], "a"))
    production_env.setenv("MOLAM_ID_JWKS_FILE", str(tmp_path / "jwks.json"))
    settings = load_settings()
    verifier = TokenVerifier(key_ring(settings), settings.molam_id_issuer, settings.molam_id_audience)
    assert verifier.verify(_token(keys["a"], "a")).sub == "svc-pay"


def test_key_ring_refuses_production_settings_without_audience(key_pair):
    settings = Settings(app_env="production", molam_id_public_key=key_pair[1], molam_id_issuer=TEST_ISSUER)
    with pytest.raises(RuntimeError, match="MOLAM_ID_AUDIENCE"):
        key_ring(settings)


def test_a_token_for_another_audience_is_refused(tmp_path, keys):
    _write_jwks(tmp_path / "jwks.json", _jwk(keys["a"], "a"))
    verifier = _verifier(tmp_path, molam_id_jwks_file=tmp_path / "jwks.json")
    assert verifier.verify(_token(keys["a"], "a")).roles == ("pay_module",)
    assert _refused(verifier, _token(keys["a"], "a", aud="molam-pay")) == "invalid token"
    assert _refused(verifier, _token(keys["a"], "a", aud=None)) == "invalid token"
    assert _refused(verifier, _token(keys["a"], "a", iss=None)) == "invalid token"
    assert _refused(verifier, _token(keys["a"], "a", iss="https://id.other.test")) == "invalid token"


# --- claims and headers ----------------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("bad", ["string", "bool"])
def test_time_claims_must_be_numbers(tmp_path, keys, claim, bad):
    _write_jwks(tmp_path / "jwks.json", _jwk(keys["a"], "a"))
    verifier = _verifier(tmp_path, molam_id_jwks_file=tmp_path / "jwks.json")
    good = int(time.time()) + (600 if claim == "exp" else -60)
    value = str(good) if bad == "string" else True
    # exp=true reads as 1 (1970) to the library: refused as expired, also a generic reason.
    assert _refused(verifier, _token(keys["a"], "a", **{claim: value})) in {"invalid token", "token expired"}
    assert verifier.verify(_token(keys["a"], "a", **{claim: good})).sub == "svc-pay"


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c", "crit"])
def test_key_bearing_headers_are_refused(tmp_path, keys, header):
    _write_jwks(tmp_path / "jwks.json", _jwk(keys["a"], "a"))
    verifier = _verifier(tmp_path, molam_id_jwks_file=tmp_path / "jwks.json")
    values = {"jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/cert.pem",
              "jwk": _jwk(keys["a"], "a"), "x5c": ["MIIB"], "crit": ["exp"]}
    assert _refused(verifier, _token(keys["a"], "a", headers={header: values[header]})) == "invalid token"


def test_401_bodies_never_carry_the_library_message(client, make_token, key_pair):
    now = int(time.time())
    private_pem = key_pair[0]
    tokens = {
        "expired": make_token("ops_admin", ttl_s=-120),
        "string exp": make_token("ops_admin", exp=str(now + 600)),
        "wrong audience": make_token("ops_admin", audience="someone-else"),
        "garbage": "not-a-jwt",
        "bad signature": make_token("ops_admin")[:-6] + "AAAAAA",
        "alg none": "{}.{}.".format(
            base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode(),
            base64.urlsafe_b64encode(json.dumps({"sub": "x", "roles": ["ops_admin"], "exp": now + 60}).encode()).rstrip(b"=").decode(),
        ),
        "jku header": jwt.encode(
            {"sub": "x", "roles": ["ops_admin"], "exp": now + 60, "iss": TEST_ISSUER, "aud": TEST_AUDIENCE},
            private_pem, algorithm="RS256", headers={"jku": "https://evil.example/jwks.json"},
        ),
    }
    for name, token in tokens.items():
        response = client.get("/api/experiments", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        body = response.get_json()
        assert body["code"] == 401 and body["message"] in GENERIC_REASONS, (name, body)
    assert client.get("/api/experiments").get_json()["message"] == "missing bearer token"
    expired = client.get("/api/experiments", headers={"Authorization": f"Bearer {tokens['expired']}"})
    assert expired.get_json()["message"] == "token expired"


# --- JWKS file -------------------------------------------------------------------------


def test_jwks_file_selects_the_key_by_kid_during_a_rotation(tmp_path, keys):
    path = tmp_path / "jwks.json"
    _write_jwks(path, _jwk(keys["a"], "a"), _jwk(keys["b"], "b"))
    verifier = _verifier(tmp_path, molam_id_jwks_file=path)
    assert verifier.verify(_token(keys["a"], "a", sub="old")).sub == "old"
    assert verifier.verify(_token(keys["b"], "b", sub="new")).sub == "new"
    # A kid naming one key with a signature by the other is refused.
    assert _refused(verifier, _token(keys["a"], "b")) == "invalid token"
    assert _refused(verifier, _token(keys["c"], "c")) == "invalid token"
    # Without a kid, two keys could have signed it: refused.
    assert _refused(verifier, _token(keys["a"])) == "invalid token"
    # The next rotation: a is dropped, c published; the file is re-read on the unknown kid.
    _write_jwks(path, _jwk(keys["b"], "b"), _jwk(keys["c"], "c"))
    assert verifier.verify(_token(keys["c"], "c", sub="newest")).sub == "newest"
    assert _refused(verifier, _token(keys["a"], "a", sub="dropped")) == "invalid token"


def test_a_key_dropped_from_the_set_stops_verifying_tokens_already_seen(tmp_path, keys):
    path = tmp_path / "jwks.json"
    _write_jwks(path, _jwk(keys["a"], "a"), _jwk(keys["b"], "b"))
    verifier = _verifier(tmp_path, molam_id_jwks_file=path)
    seen = _token(keys["a"], "a", sub="seen")
    assert verifier.verify(seen).sub == "seen"
    _write_jwks(path, _jwk(keys["b"], "b"), _jwk(keys["c"], "c"))  # "a" is withdrawn
    assert verifier.verify(_token(keys["c"], "c")).sub == "svc-pay"  # the unknown kid re-reads the file
    assert _refused(verifier, seen) == "invalid token"


def test_a_token_without_kid_is_accepted_when_the_set_has_one_key(tmp_path, keys):
    path = tmp_path / "jwks.json"
    _write_jwks(path, _jwk(keys["a"], None))
    verifier = _verifier(tmp_path, molam_id_jwks_file=path)
    assert verifier.verify(_token(keys["a"])).sub == "svc-pay"
    assert _refused(verifier, _token(keys["b"])) == "invalid token"


def test_jwks_keys_not_meant_for_rs256_signatures_are_ignored(tmp_path, keys):
    path = tmp_path / "jwks.json"
    _write_jwks(path, _jwk(keys["a"], "enc", use="enc"), _jwk(keys["b"], "ps", alg="PS256"), _jwk(keys["c"], "c"))
    verifier = _verifier(tmp_path, molam_id_jwks_file=path)
    assert _refused(verifier, _token(keys["a"], "enc")) == "invalid token"
    assert _refused(verifier, _token(keys["b"], "ps")) == "invalid token"
    assert verifier.verify(_token(keys["c"])).sub == "svc-pay"  # the one usable key


def test_pem_key_stays_supported_next_to_a_jwks(tmp_path, keys, key_pair, make_token):
    path = tmp_path / "jwks.json"
    _write_jwks(path, _jwk(keys["a"], "a"), _jwk(keys["b"], "b"))
    verifier = _verifier(tmp_path, molam_id_jwks_file=path, molam_id_public_key=key_pair[1])
    assert verifier.verify(make_token("ops_admin", sub="pem-signed")).sub == "pem-signed"
    assert verifier.verify(_token(keys["b"], "b", sub="jwks-signed")).sub == "jwks-signed"


def test_unreadable_jwks_file_refuses_to_start(tmp_path):
    (tmp_path / "jwks.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="MOLAM_ID_JWKS_FILE"):
        _verifier(tmp_path, molam_id_jwks_file=tmp_path / "jwks.json")


# --- JWKS URL --------------------------------------------------------------------------


class _JwksServer:
    """A real HTTP server on localhost serving a JWKS document that the test can change."""

    def __init__(self):
        self.document: dict = {"keys": []}
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                body = json.dumps(server.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server():
    server = _JwksServer()
    yield server
    server.close()


def test_jwks_url_is_refetched_on_an_unknown_kid(tmp_path, keys, jwks_server):
    jwks_server.document = {"keys": [_jwk(keys["a"], "a")]}
    verifier = _verifier(tmp_path, molam_id_jwks_url=jwks_server.url, molam_id_jwks_min_refresh_s=0.0)
    assert jwks_server.fetches == 1
    assert verifier.verify(_token(keys["a"], "a")).sub == "svc-pay"
    assert jwks_server.fetches == 1  # served from the cached set
    jwks_server.document = {"keys": [_jwk(keys["a"], "a"), _jwk(keys["b"], "b")]}
    assert verifier.verify(_token(keys["b"], "b", sub="rotated")).sub == "rotated"
    assert jwks_server.fetches == 2
    assert verifier.verify(_token(keys["a"], "a", sub="still-valid")).sub == "still-valid"


def test_jwks_url_refreshes_are_rate_bounded(tmp_path, keys, jwks_server):
    jwks_server.document = {"keys": [_jwk(keys["a"], "a")]}
    verifier = _verifier(tmp_path, molam_id_jwks_url=jwks_server.url, molam_id_jwks_min_refresh_s=60.0)
    for n in range(20):
        assert _refused(verifier, _token(keys["c"], f"made-up-{n}")) == "invalid token"
    assert jwks_server.fetches == 1
    assert verifier.verify(_token(keys["a"], "a")).sub == "svc-pay"


def test_jwks_url_is_refreshed_periodically(tmp_path, keys, jwks_server):
    jwks_server.document = {"keys": [_jwk(keys["a"], "a")]}
    verifier = _verifier(
        tmp_path, molam_id_jwks_url=jwks_server.url, molam_id_jwks_refresh_s=1.0, molam_id_jwks_min_refresh_s=0.0
    )
    jwks_server.document = {"keys": [_jwk(keys["b"], "b")]}
    time.sleep(1.1)
    # The set expired: the next token reads the new document, so the dropped key no longer verifies.
    assert _refused(verifier, _token(keys["a"], "a", sub="after-expiry")) == "invalid token"
    assert jwks_server.fetches >= 2


def test_jwks_url_down_keeps_the_last_good_keys(tmp_path, keys, jwks_server):
    jwks_server.document = {"keys": [_jwk(keys["a"], "a")]}
    verifier = _verifier(
        tmp_path, molam_id_jwks_url=jwks_server.url, molam_id_jwks_refresh_s=1.0, molam_id_jwks_min_refresh_s=0.0,
        molam_id_jwks_timeout_s=0.5,
    )
    jwks_server.close()
    time.sleep(1.1)
    assert verifier.verify(_token(keys["a"], "a", sub="while-down")).sub == "while-down"


def test_jwks_url_unreachable_at_start_refuses_tokens_without_failing(tmp_path, keys):
    verifier = _verifier(tmp_path, molam_id_jwks_url="http://127.0.0.1:9/jwks.json", molam_id_jwks_timeout_s=0.5)
    assert _refused(verifier, _token(keys["a"], "a")) == "invalid token"


# --- the dev key pair ------------------------------------------------------------------


def test_dev_key_pair_is_private(tmp_path):
    old_umask = os.umask(0o022)
    try:
        settings = Settings(app_env="development", dev_key_dir=tmp_path / "var" / "keys")
        token = mint_dev_token(settings, "ops_admin")
    finally:
        os.umask(old_umask)
    key_dir = tmp_path / "var" / "keys"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((key_dir / "dev_private.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in key_dir.iterdir()) == ["dev_private.pem", "dev_public.pem"]
    claims = jwt.decode(token, (key_dir / "dev_public.pem").read_text(), algorithms=["RS256"])
    assert claims["roles"] == ["ops_admin"]


def test_jwks_url_serving_garbage_is_survived_and_the_fixed_document_is_used(tmp_path, keys, jwks_server):
    jwks_server.document = ["not", "a", "jwks"]
    verifier = _verifier(tmp_path, molam_id_jwks_url=jwks_server.url, molam_id_jwks_min_refresh_s=0.0)
    assert _refused(verifier, _token(keys["a"], "a")) == "invalid token"
    jwks_server.document = {"keys": [_jwk(keys["a"], "a")]}
    assert verifier.verify(_token(keys["a"], "a", sub="fixed")).sub == "fixed"


def test_a_loose_dev_key_pair_is_tightened(tmp_path):
    settings = Settings(app_env="development", dev_key_dir=tmp_path / "keys")
    mint_dev_token(settings, "ops_admin")
    key_dir = tmp_path / "keys"
    key_dir.chmod(0o755)
    (key_dir / "dev_private.pem").chmod(0o644)
    mint_dev_token(settings, "ops_admin")
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((key_dir / "dev_private.pem").stat().st_mode) == 0o600

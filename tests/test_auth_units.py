"""Unit tests of the auth pieces: KDF, store, scopes, keys, tokens, signed values, HLS signing."""

import base64
import hashlib
import hmac
import json
import os
import stat
import time

import pytest
from joserfc.jwk import RSAKey

from gateway.auth import scopes as sc
from gateway.auth import signed
from gateway.auth.hls_signing import HlsSigner
from gateway.auth.http import safe_next
from gateway.auth.keys import KeyStore
from gateway.auth.store import AuthStore, hash_password, verify_password
from gateway.auth.tokens import AccessTokens, TokenError
from pipeline.config import ConfigError, parse_args


def b64(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


# -- password KDF ----------------------------------------------------------------------------------
def test_scrypt_hash_is_salted_and_verifies():
    h1, h2 = hash_password("a-good-password"), hash_password("a-good-password")
    assert h1.startswith("scrypt$15$8$1$") and h1 != h2  # random salt
    assert verify_password("a-good-password", h1) and verify_password("a-good-password", h2)
    assert not verify_password("a-good-passworD", h1)
    assert not verify_password("a-good-password", None)  # no user: still a full scrypt, then False
    assert not verify_password("a-good-password", "scrypt$garbage")
    assert not verify_password("x" * 5000, h1)


def test_password_policy_names_the_rule():
    with pytest.raises(ValueError, match="at least 10 characters"):
        hash_password("short")


# -- store -----------------------------------------------------------------------------------------
def test_store_users_roles_and_scopes(tmp_path):
    store = AuthStore(tmp_path / "auth.db")
    for name in ("auth.db", "auth.db-wal", "auth.db-shm"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    admin = store.add_user("root", "root-password-1", role="admin")
    assert admin.scopes == {"admin", "detections:read", "camera:*:view"}
    bob = store.add_user("bob", "bob-password-1", scopes=sc.for_role("viewer", ["a"]))
    assert bob.role == "viewer" and bob.scopes == {"camera:a:view", "detections:read"}
    assert store.authenticate("bob", "bob-password-1") == bob
    assert store.authenticate("bob", "wrong-password") is None
    assert store.authenticate("nobody", "bob-password-1") is None
    assert store.authenticate("bad name!", "x") is None
    with pytest.raises(ValueError, match="user 'bob' already exists"):
        store.add_user("bob", "another-password")
    with pytest.raises(ValueError, match="user name must match"):
        store.add_user("no spaces", "another-password")
    with pytest.raises(ValueError, match="unknown scope 'camera:A B:view'"):
        store.add_user("eve", "eve-password-1", scopes={"camera:A B:view"})
    sid = store.create_session("web", "bob", "camera:a:view", 60)
    store.set_password("bob", "new-password-1")
    assert store.get_session(sid, "web") is None  # a new password ends the sessions
    assert store.authenticate("bob", "new-password-1")
    store.remove_user("bob")
    assert store.get_user("bob") is None and [u.username for u in store.list_users()] == ["root"]


def test_store_clients_secrets_are_hashed(tmp_path):
    store = AuthStore(tmp_path / "auth.db")
    row, secret = store.add_client("svc", {"camera:a:view", "detections:read"})
    assert row.grant_types == ("client_credentials",) and secret and row.secret_hash != secret
    assert secret.encode() not in (tmp_path / "auth.db").read_bytes()
    pub, none = store.add_client("app", {"camera:a:view"}, public=True, redirect_uris=["http://127.0.0.1:9/cb"])
    assert none is None and pub.grant_types == ("authorization_code", "refresh_token")
    with pytest.raises(ValueError, match="redirect URI must be an absolute https URL"):
        store.add_client("bad", {"admin"}, public=True, redirect_uris=["http://evil.example/cb"])
    with pytest.raises(ValueError, match="public client cannot use client_credentials"):
        store.add_client("bad", {"admin"}, public=True, grant_types=["client_credentials"])
    store.remove_client(row.client_id)
    assert store.get_client(row.client_id) is None


def test_store_lockout_after_failures(tmp_path):
    store = AuthStore(tmp_path / "auth.db")
    assert store.record_failure("user:bob", 3, 60) == 0 and store.record_failure("user:bob", 3, 60) == 0
    assert store.record_failure("user:bob", 3, 60) == 60
    assert 58 < store.locked_for("user:bob") <= 60
    store.clear_failures("user:bob")
    assert store.locked_for("user:bob") == 0


# -- scopes ----------------------------------------------------------------------------------------
def test_scope_rules():
    assert sc.grants({"camera:*:view"}, "camera:x:view") and not sc.grants({"camera:*:view"}, "detections:read")
    assert sc.grants({"admin"}, "detections:read") and not sc.grants({"camera:a:view"}, "camera:b:view")
    assert sc.narrow({"camera:a:view", "camera:b:view", "admin"}, {"camera:a:view"}) == {"camera:a:view"}
    assert sc.narrow({"camera:*:view"}, {"camera:a:view", "detections:read"}) == {"camera:a:view"}
    assert sc.narrow({"camera:a:view", "detections:read"}, {"camera:*:view"}) == {"camera:a:view"}
    assert sc.cameras_of({"camera:a:view", "detections:read"}) == {"a"} and sc.cameras_of({"admin"}) is None
    with pytest.raises(ValueError, match="unknown scope 'camera:../x:view'"):
        sc.parse("camera:../x:view")


# -- keys ------------------------------------------------------------------------------------------
def test_key_created_once_private_and_published(tmp_path):
    keys = KeyStore(tmp_path / "keys")
    pem = tmp_path / "keys" / "signing-key.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys" / "hmac-secret").stat().st_mode) == 0o600
    again = KeyStore(tmp_path / "keys")
    assert again.kid == keys.kid and again.subkey("x") == keys.subkey("x") != keys.subkey("y")
    jwk = keys.jwks()["keys"][0]
    assert jwk["kid"] == keys.kid and jwk["alg"] == "RS256" and "d" not in jwk and "p" not in jwk
    os.chmod(pem, 0o644)  # loosened by hand: tightened again on load
    KeyStore(tmp_path / "keys")
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600


# -- tokens ----------------------------------------------------------------------------------------
@pytest.fixture
def tokens(tmp_path):
    return AccessTokens(KeyStore(tmp_path / "keys"), "http://lookout.test", "lookout", 300)


def test_token_claims(tokens):
    claims = tokens.verify(tokens.issue("bob", "camera:a:view", "c1"))
    assert claims["iss"] == "http://lookout.test" and claims["aud"] == "lookout" and claims["sub"] == "bob"
    assert claims["scope"] == "camera:a:view" and claims["client_id"] == "c1" and claims["jti"]
    assert 295 <= claims["exp"] - claims["iat"] <= 300


def test_token_rejections(tokens, tmp_path):
    good = tokens.issue("bob", "camera:a:view", "c1")
    h, p, s = good.split(".")
    with pytest.raises(TokenError, match="token expired"):
        tokens.verify(tokens.issue("bob", "x", "c1", now=time.time() - 400))
    with pytest.raises(TokenError, match="'aud'"):
        AccessTokens(tokens.keys, "http://lookout.test", "other", 300).verify(good)
    with pytest.raises(TokenError, match="'iss'"):
        AccessTokens(tokens.keys, "http://elsewhere", "lookout", 300).verify(good)
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    with pytest.raises(TokenError, match="bad_signature"):
        tokens.verify(f"{h}.{b64({**claims, 'scope': 'admin'})}.{s}")
    with pytest.raises(TokenError, match="unsupported_algorithm"):
        tokens.verify(f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{p}.")
    pub_pem = RSAKey.import_key(tokens.keys.public_jwk()).as_pem(private=False)
    forged_h = b64({"alg": "HS256", "typ": "at+jwt", "kid": tokens.keys.kid})
    mac = base64.urlsafe_b64encode(hmac.new(pub_pem, f"{forged_h}.{p}".encode(), hashlib.sha256).digest())
    with pytest.raises(TokenError, match="unsupported_algorithm"):
        tokens.verify(f"{forged_h}.{p}.{mac.decode().rstrip('=')}")
    other = AccessTokens(KeyStore(tmp_path / "other-keys"), "http://lookout.test", "lookout", 300)
    with pytest.raises(TokenError):
        tokens.verify(other.issue("bob", "admin", "c1"))  # signed by a key we never published
    for junk in ("", "abc", "a.b", "a.b.c.d", "x" * 9000):
        with pytest.raises(TokenError):
            tokens.verify(junk)


# -- signed values and HLS URLs --------------------------------------------------------------------
def test_signed_values_expire_and_resist_tampering():
    v = signed.sign(b"k" * 32, {"state": "s"}, 60)
    assert signed.unsign(b"k" * 32, v) == {"state": "s"}
    assert signed.unsign(b"j" * 32, v) is None
    assert signed.unsign(b"k" * 32, v[:-2] + "xx") is None
    assert signed.unsign(b"k" * 32, signed.sign(b"k" * 32, {"a": 1}, -1)) is None


def test_hls_signatures_bind_camera_and_expiry():
    signer = HlsSigner(b"k" * 32, 60, 3600)
    q = dict(kv.split("=") for kv in signer.query("a").split("&"))
    assert signer.verify("a", q["exp"], q["sig"])
    assert not signer.verify("b", q["exp"], q["sig"])
    assert not signer.verify("a", str(int(q["exp"]) + 1), q["sig"])
    past = int(time.time()) - 1
    assert not signer.verify("a", str(past), signed.mac(b"k" * 32, f"hls|a|{past}"))
    far = int(time.time()) + 10 * 86400  # a validly signed but absurdly long-lived URL is refused
    assert not signer.verify("a", str(far), signed.mac(b"k" * 32, f"hls|a|{far}"))
    text = '#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n#EXTINF:1.0,\nseg_1.ts\n'
    out = signer.rewrite_playlist(text, "a")
    assert "seg_1.ts?exp=" in out and 'URI="init.mp4?exp=' in out and out.startswith("#EXTM3U\n")


def test_safe_next_refuses_other_sites():
    for bad in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", None, "x"):
        assert safe_next(bad) == "/", bad
    assert safe_next("/hls/a/index.m3u8?x=1") == "/hls/a/index.m3u8?x=1"


# -- config ----------------------------------------------------------------------------------------
def test_auth_config_errors_name_field_and_value():
    base = {"cameras": [{"id": "a", "source": "x"}], "model": {"onnx": "m"}}
    with pytest.raises(ConfigError, match=r"gateway.auth.access_token_ttl_s.*\(got 5\)"):
        parse_args({**base, "gateway": {"auth": {"access_token_ttl_s": 5}}})
    with pytest.raises(ConfigError, match="only allowed on loopback"):
        parse_args({**base, "gateway": {"public_url": "http://192.0.2.1:8000", "auth": {"mode": "none"}}})
    with pytest.raises(ConfigError, match="gateway.auth.colour"):
        parse_args({**base, "gateway": {"auth": {"colour": "red"}}})
    with pytest.raises(ConfigError, match="needs the `oidc` section"):
        parse_args({**base, "gateway": {"auth": {"mode": "oidc"}}})
    ok = parse_args({**base, "gateway": {"auth": {"mode": "none"}}})
    assert ok.gateway.auth.mode == "none"

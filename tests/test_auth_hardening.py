"""Issue 13 (hardening), auth and trust: lock-outs that cannot be raced or turned against the owner,
a ceiling on password checks, revocation that reaches access tokens, forwarded headers believed only
from trusted proxies, links from public_url, refresh tokens bound to their client, and HTML security
headers. The real gateway app (Starlette TestClient), real redis-server, real SQLite."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient

from auth_fixtures import (
    ADMIN_PASSWORD,
    BASE_URL,
    add_client,
    authorize_code,
    bearer,
    browser_login,
    client_for,
    client_token,
    login_form,
    make_ctx,
    pkce,
)
from gateway.app import create_app
from gateway.auth.store import AuthStore
from pipeline.bus import StatusStore

REDIRECT = "http://127.0.0.1:9999/callback"


@pytest.fixture
def ctx(redis_server, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    ctx = make_ctx(
        redis_server.url,
        tmp_path,
        monkeypatch,
        login_max_failures=3,
        login_lockout_s=60,
        revocation_check_s=0,
        gateway={"public_url": "https://lookout.example"},
    )
    StatusStore(ctx.redis).register("a", {"name": "A"})
    return ctx


@pytest.fixture
def client(ctx):
    return client_for(ctx)


def user_tokens(ctx, client, username: str = "admin", password: str = ADMIN_PASSWORD) -> tuple[str, dict]:
    """(client id, tokens) of a public app that `username` authorized (code + PKCE)."""
    cid, _ = add_client(ctx, {"camera:a:view", "detections:read"}, public=True, redirect_uris=[REDIRECT])
    assert login_form(client, username, password).status_code == 303
    verifier, challenge = pkce()
    code = authorize_code(client, cid, REDIRECT, challenge)
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": cid,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 200, r.text
    return cid, {**r.json(), "code": code, "verifier": verifier}


def refresh(client, cid: str, token: str):
    return client.post("/oauth/token", data={"grant_type": "refresh_token", "client_id": cid, "refresh_token": token})


def assert_revoked(client, access: str):
    r = client.get("/api/cameras", headers=bearer(access))
    assert r.status_code == 401 and r.json()["detail"] == "token revoked", r.text


# -- item 3: the lock-out cannot be raced ----------------------------------------------------------------
def test_concurrent_attempts_are_counted_before_the_check(tmp_path):
    store = AuthStore(tmp_path / "auth.db")
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda _: store.begin_attempt({"user:bob|addr:a": 5}, 60), range(48)))
    assert sum(1 for wait, _ in results if wait == 0) == 5  # five may check a password, 43 wait
    assert sum(1 for _, locks in results if locks) == 1  # the fifth started the lock-out
    store.refund_attempt("user:bob|addr:a", 5)  # one of them was right after all: not a failure
    assert store.locked_for("user:bob|addr:a") == 0
    assert store.begin_attempt({"user:bob|addr:a": 5}, 60)[1] == 60  # ...and the next one is the fifth again


def test_concurrent_wrong_passwords_check_at_most_max_failures(redis_server, tmp_path, monkeypatch):
    ctx = make_ctx(redis_server.url, tmp_path, monkeypatch, login_max_failures=5, login_max_concurrent_checks=64)
    store, checked = ctx.auth.store, []
    real = store.authenticate

    def counting(username, password):
        checked.append(username)
        return real(username, password)

    monkeypatch.setattr(store, "authenticate", counting)
    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda _: login_form(client_for(ctx), "admin", "wrong-password!").status_code, range(24)))
    assert len(checked) <= 5, f"{len(checked)} passwords checked of 24 concurrent guesses ({codes})"
    assert codes.count(429) >= 19
    assert login_form(client_for(ctx), "admin", ADMIN_PASSWORD).status_code == 429  # locked, from here


# -- item 4: the ceiling on password checks, and client secrets -------------------------------------------
def test_password_checks_beyond_the_ceiling_get_503_and_are_not_counted(redis_server, tmp_path, monkeypatch):
    ctx = make_ctx(redis_server.url, tmp_path, monkeypatch, login_max_failures=2, login_max_concurrent_checks=1)
    store, inside, go_on = ctx.auth.store, threading.Event(), threading.Event()
    real = store.authenticate

    def slow(username, password):  # the first check holds the only slot until the test lets it go
        inside.set()
        go_on.wait(30)
        return real(username, password)

    monkeypatch.setattr(store, "authenticate", slow)
    app = create_app(ctx)  # one gateway process: its one ceiling
    browser = lambda: TestClient(app, base_url=BASE_URL, follow_redirects=False, client=("127.0.0.1", 5))  # noqa: E731
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(login_form, browser(), "admin", "wrong-password!")
        assert inside.wait(30)
        r = login_form(browser(), "admin", "wrong-password!")
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "Too many logins at once" in r.text
        go_on.set()
        assert first.result().status_code == 401
    # The refused attempt was not counted: one failure so far, so this one is checked (and locks).
    r = login_form(client_for(ctx), "admin", "wrong-password!")
    assert r.status_code == 429 and "Wrong user name or password." in r.text


def test_failed_client_secrets_are_throttled_per_client_and_address(ctx):
    cid, secret = add_client(ctx, {"camera:a:view"})
    guesser = client_for(ctx, address="127.0.0.9")
    for _ in range(3):
        r = guesser.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, "wrong-secret"))
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = guesser.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
    assert r.status_code == 429 and r.json()["error"] == "slow_down" and int(r.headers["retry-after"]) > 0
    r = guesser.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret}
    )  # the form way is the same client
    assert r.status_code == 429
    assert client_token(client_for(ctx), cid, secret)["access_token"]  # the client itself, elsewhere


# -- item 5: revoking a user, client or grant revokes its access tokens ---------------------------------
def test_removed_client_loses_its_access_tokens(ctx, client):
    cid, secret = add_client(ctx, {"camera:a:view"})
    access = client_token(client, cid, secret)["access_token"]
    assert client.get("/api/cameras", headers=bearer(access)).status_code == 200
    ctx.auth.store.remove_client(cid)
    assert_revoked(client, access)


def test_removed_user_loses_their_access_tokens(ctx, client):
    ctx.auth.store.add_user("bob", "bob-password-1", scopes={"camera:a:view", "detections:read"})
    _, tok = user_tokens(ctx, client, "bob", "bob-password-1")
    assert client.get("/api/cameras", headers=bearer(tok["access_token"])).status_code == 200
    ctx.auth.store.remove_user("bob")
    assert_revoked(client, tok["access_token"])


def test_new_password_ends_older_access_tokens_only(ctx, client):
    _, old = user_tokens(ctx, client)
    ctx.auth.store.set_password("admin", "a-new-password-1")
    assert_revoked(client, old["access_token"])
    _, new = user_tokens(ctx, client_for(ctx), "admin", "a-new-password-1")  # within the same second
    assert client.get("/api/cameras", headers=bearer(new["access_token"])).status_code == 200


def test_code_replay_revokes_the_access_tokens_of_the_grant(ctx, client):
    cid, tok = user_tokens(ctx, client)
    assert client.get("/api/cameras", headers=bearer(tok["access_token"])).status_code == 200
    again = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": tok["code"],
            "client_id": cid,
            "redirect_uri": REDIRECT,
            "code_verifier": tok["verifier"],
        },
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert_revoked(client, tok["access_token"])


def test_refresh_token_replay_revokes_the_access_tokens_of_the_grant(ctx, client):
    cid, tok = user_tokens(ctx, client)
    r = refresh(client, cid, tok["refresh_token"])
    assert r.status_code == 200
    newer = r.json()["access_token"]
    assert client.get("/api/cameras", headers=bearer(newer)).status_code == 200
    assert refresh(client, cid, tok["refresh_token"]).status_code == 400  # the replay
    assert_revoked(client, tok["access_token"])
    assert_revoked(client, newer)


def test_revocations_are_cached_briefly_per_key(tmp_path):
    from gateway.auth.tokens import Revocations

    store, now = AuthStore(tmp_path / "auth.db"), [100.0]
    revocations = Revocations(store, cache_s=2.0, clock=lambda: now[0])
    claims = {"jti": "j1", "sub": "bob", "client_id": "app", "grant_id": "g1", "iat": time.time()}
    assert not revocations(claims)
    store.revoke_tokens_of("user:bob")  # e.g. `lookout users remove bob` on another host
    assert not revocations(claims)  # still cached
    now[0] += 2.0
    assert revocations(claims)
    time.sleep(0.01)
    later = {**claims, "iat": time.time()}  # issued after the revocation
    assert not revocations(later)
    time.sleep(0.01)
    store.revoke_tokens_of("grant:g1")
    now[0] += 2.0
    assert revocations(later)
    assert not revocations({**later, "grant_id": "g2"})


# -- item 6: forwarded headers only from trusted proxies; links from public_url ---------------------------
def forwarded_scope(peer: str, headers: dict, trusted=("127.0.0.0/8",)) -> dict:
    from gateway.auth.http import ForwardedMiddleware, TrustedProxies

    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    import asyncio

    scope = {
        "type": "http",
        "scheme": "http",
        "client": (peer, 1234),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(ForwardedMiddleware(app, TrustedProxies(list(trusted)))(scope, None, None))
    return seen


def test_forwarded_headers_are_believed_only_from_trusted_proxies():
    xff = {"x-forwarded-for": "203.0.113.9, 198.51.100.4", "x-forwarded-proto": "https"}
    via_proxy = forwarded_scope("127.0.0.1", xff)
    assert via_proxy["client"][0] == "198.51.100.4" and via_proxy["scheme"] == "https"
    # A chain of trusted proxies: the nearest address none of them vouches for.
    chained = forwarded_scope("10.0.0.2", xff, trusted=("10.0.0.0/8", "198.51.100.4/32"))
    assert chained["client"][0] == "203.0.113.9"
    direct = forwarded_scope("192.0.2.10", xff)
    assert direct["client"][0] == "192.0.2.10" and direct["scheme"] == "http"
    assert all(k != b"x-forwarded-for" and k != b"x-forwarded-proto" for k, _ in direct["headers"])
    garbage = forwarded_scope("127.0.0.1", {"x-forwarded-for": "unknown"})
    assert garbage["client"][0] == "127.0.0.1"
    with pytest.raises(ValueError, match="trusted_proxies: 'lan' is not an IP address or CIDR"):
        from pipeline.config import GatewayConfig

        GatewayConfig(trusted_proxies=["lan"])


def test_failed_logins_are_counted_per_forwarded_address_only_behind_a_trusted_proxy(ctx):
    via_proxy = client_for(ctx, base_url="https://lookout.example")  # from 127.0.0.1: a trusted proxy
    via_proxy.headers["x-forwarded-for"] = "198.51.100.7"
    for _ in range(3):
        r = login_form(via_proxy, "admin", "guess-guess")
    assert r.status_code == 429
    assert ctx.auth.store.locked_for("user:admin|addr:198.51.100.7") > 0
    assert login_form(client_for(ctx), "admin", ADMIN_PASSWORD).status_code == 303  # the proxy's other clients
    direct = client_for(ctx, base_url="https://lookout.example", address="192.0.2.10")
    direct.headers["x-forwarded-for"] = "198.51.100.8"  # not believed from a direct peer
    assert [login_form(direct, "admin", "guess-guess").status_code for _ in range(3)] == [401, 401, 429]
    assert ctx.auth.store.locked_for("user:admin|addr:192.0.2.10") > 0
    assert ctx.auth.store.locked_for("user:admin|addr:198.51.100.8") == 0


def test_behind_haproxy_a_forwarded_address_is_the_clients_own_claim(ctx, monkeypatch):
    # HAProxy (loopback, trusted) adds no X-Forwarded-For: one that arrives was written by the client,
    # who would name a new address for every guess to dodge the lock-out.
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    haproxy = client_for(ctx)
    for i in range(3):
        haproxy.headers["x-forwarded-for"] = f"198.51.100.{20 + i}"
        r = login_form(haproxy, "admin", "guess-guess")
    assert r.status_code == 429 and ctx.auth.store.locked_for("user:admin|addr:127.0.0.1") > 0
    # Every client has HAProxy's loopback address: whether one is on the box, its Host header says.
    lan = client_for(ctx, base_url="http://192.0.2.2:8000")
    r = lan.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert r.status_code == 400 and r.json()["error"] == "insecure_transport"


def test_links_and_redirects_come_from_public_url_not_the_host_header(ctx):
    cid, secret = add_client(ctx, {"camera:a:view"})
    evil = client_for(ctx, base_url="http://evil.example")
    access = client_token(client_for(ctx), cid, secret)["access_token"]
    link = evil.get("/api/cameras/a/hls-link", headers=bearer(access)).json()
    assert link["url"].startswith("https://lookout.example/hls/a/index.m3u8?exp="), link
    r = evil.get("/api/cameras/?x=1", headers=bearer(access))
    assert r.status_code == 307 and r.headers["location"] == "https://lookout.example/api/cameras?x=1"
    assert evil.get("/static/missing.js/").status_code in (401, 404)  # no redirect loop under a mount


# -- item 7: refresh tokens bound to their client; HTML security headers --------------------------------
def test_refresh_token_with_another_client_id_is_refused_and_stays_usable(ctx, client):
    cid, tok = user_tokens(ctx, client)
    other, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    r = refresh(client, other, tok["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = refresh(client, cid, tok["refresh_token"])
    assert r.status_code == 200, r.text


def test_every_html_response_forbids_framing(ctx, client):
    browser_login(client)
    pages = [client.get("/"), client_for(ctx).get("/login"), client_for(ctx).get("/", headers={"accept": "text/html"})]
    assert [p.status_code for p in pages] == [200, 200, 302]
    for page in pages[:2]:
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["x-frame-options"] == "DENY"
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "media-src 'self' blob:" in csp
    assert "content-security-policy" not in client.get("/api/cameras").headers

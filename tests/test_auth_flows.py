"""OAuth flows through the real gateway app (Starlette TestClient, real redis-server, real SQLite)."""

import time

import numpy as np
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from auth_fixtures import (
    ADMIN_PASSWORD,
    add_client,
    authorize_code,
    bearer,
    browser_login,
    client_for,
    client_token,
    follow,
    login_form,
    make_ctx,
    pkce,
)
from pipeline.bus import FrameBus, ResultStore, StatusStore
from pipeline.types import Detections, FrameResult

REDIRECT = "http://127.0.0.1:9999/callback"


@pytest.fixture
def ctx(redis_server, tmp_path, monkeypatch):
    ctx = make_ctx(redis_server.url, tmp_path, monkeypatch)
    st = StatusStore(ctx.redis)
    st.register("a", {"name": "A"})
    st.register("b", {"name": "B"})
    return ctx


@pytest.fixture
def client(ctx):
    return client_for(ctx)


def publish_detection(ctx, cid: str) -> None:
    ref = FrameBus(ctx.redis).put(cid, 7, np.zeros((8, 8, 3), np.uint8), time.time(), 0.7)
    d = Detections(np.array([[1, 2, 30, 40]]), np.array([0.9]), np.array([0]))
    ResultStore(ctx.redis).publish([FrameResult(ref, d, "yolov4-tiny")], ["person"])


def test_browser_login_gives_a_session_and_logout_ends_it(ctx, client):
    r = client.get("/", headers={"accept": "text/html"})
    assert r.status_code == 302 and r.headers["location"] == "/login?next=%2F"
    post = login_form(client, "admin", ADMIN_PASSWORD)
    assert post.status_code == 303 and post.headers["location"] == "/auth/start?next=%2F"
    start = client.get(post.headers["location"])
    assert "code_challenge_method=S256" in start.headers["location"]
    page = follow(client, start)
    assert page.status_code == 200 and 'id="logout"' in page.text
    session = client.cookies.get("lookout_session")
    assert session
    me = client.get("/auth/me").json()
    assert me["name"] == "admin" and me["via"] == "session" and me["cameras"] == "*"
    assert {c["id"] for c in client.get("/api/cameras").json()["cameras"]} == {"a", "b"}
    out = client.post("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    client.cookies.set("lookout_session", session)  # a copy of the old cookie is worth nothing now
    assert client.get("/api/cameras").status_code == 401


def test_session_cookie_flags(ctx, client):
    post = login_form(client, "admin", ADMIN_PASSWORD)
    sso = [v for k, v in post.headers.multi_items() if k == "set-cookie" and v.startswith("lookout_session_login=")][0]
    assert "HttpOnly" in sso and "SameSite=lax" in sso and "Secure" not in sso  # plain http on loopback
    # Behind a TLS proxy (X-Forwarded-Proto: https) or over https, cookies are Secure.
    page = client_for(ctx).get("/login", headers={"x-forwarded-proto": "https"})
    assert "Secure" in page.headers["set-cookie"] and "SameSite=strict" in page.headers["set-cookie"]
    tls = client_for(ctx, base_url="https://lookout.example")
    post = login_form(tls, "admin", ADMIN_PASSWORD)
    sso = [v for k, v in post.headers.multi_items() if k == "set-cookie" and v.startswith("lookout_session_login=")][0]
    assert "Secure" in sso and "HttpOnly" in sso


def test_viewer_sees_only_their_cameras(ctx, client):
    ctx.auth.store.add_user("bob", "bob-password-1", scopes={"camera:a:view", "detections:read"})
    browser_login(client, "bob", "bob-password-1")
    assert [c["id"] for c in client.get("/api/cameras").json()["cameras"]] == ["a"]
    assert client.get("/api/cameras/a").status_code == 200
    r = client.get("/api/cameras/b")
    assert r.status_code == 403 and r.json() == {"error": "forbidden", "needs": "camera:b:view"}
    # An admin narrows bob's rights: the live session follows at once.
    ctx.auth.store.remove_user("bob")
    assert client.get("/api/cameras").status_code == 401


def test_auth_code_pkce_flow_for_a_public_client(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view", "detections:read"}, public=True, redirect_uris=[REDIRECT])
    login_form(client, "admin", ADMIN_PASSWORD)
    verifier, challenge = pkce()
    code = authorize_code(client, cid, REDIRECT, challenge, scope="camera:a:view detections:read")
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
    tok = r.json()
    assert tok["token_type"] == "Bearer" and tok["refresh_token"] and tok["expires_in"] == 300
    assert tok["scope"] == "camera:a:view detections:read"
    publish_detection(ctx, "a")
    assert client.get("/api/cameras/a/detections/latest", headers=bearer(tok["access_token"])).status_code == 200
    assert client.get("/api/cameras/b", headers=bearer(tok["access_token"])).status_code == 403


def test_authorize_requires_login_and_pkce(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    params = {
        "response_type": "code",
        "client_id": cid,
        "redirect_uri": REDIRECT,
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    r = client.get("/oauth/authorize", params=params)
    assert r.status_code == 302 and r.headers["location"].startswith("/login?next=%2Foauth%2Fauthorize%3F")
    login_form(client, "admin", ADMIN_PASSWORD)
    no_pkce = {k: v for k, v in params.items() if not k.startswith("code_challenge")}
    r = client.get("/oauth/authorize", params=no_pkce)
    assert r.status_code == 302 and "error=invalid_request" in r.headers["location"]
    assert r.headers["location"].startswith(REDIRECT)
    r = client.get("/oauth/authorize", params={**params, "code_challenge_method": "plain"})
    assert "error=invalid_request" in r.headers["location"]


def test_open_redirect_in_redirect_uri_is_refused(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    login_form(client, "admin", ADMIN_PASSWORD)
    for evil in (
        "https://evil.example/callback",
        REDIRECT + "/../evil",
        REDIRECT + "?x=https://evil.example",
        "http://127.0.0.1:9999.evil.example/callback",
    ):
        r = client.get(
            "/oauth/authorize",
            params={
                "response_type": "code",
                "client_id": cid,
                "redirect_uri": evil,
                "code_challenge": pkce()[1],
                "code_challenge_method": "S256",
            },
        )
        assert r.status_code == 400 and "location" not in r.headers, evil
        assert r.json()["error"] == "invalid_request"
    r = client.get("/oauth/authorize", params={"response_type": "code", "client_id": "nope", "redirect_uri": evil})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    # The login page's own `next` cannot send the browser elsewhere either.
    post = login_form(client_for(ctx), "admin", ADMIN_PASSWORD, next_url="https://evil.example/")
    assert post.headers["location"] == "/auth/start?next=%2F"


def test_wrong_pkce_verifier_is_refused(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    login_form(client, "admin", ADMIN_PASSWORD)
    verifier, challenge = pkce()
    code = authorize_code(client, cid, REDIRECT, challenge)
    wrong, _ = pkce()
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": cid,
            "redirect_uri": REDIRECT,
            "code_verifier": wrong,
        },
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    code = authorize_code(client, cid, REDIRECT, challenge)
    r = client.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "client_id": cid, "redirect_uri": REDIRECT},
    )  # no verifier at all
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_reused_authorization_code_is_refused_and_revokes_the_grant(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    login_form(client, "admin", ADMIN_PASSWORD)
    verifier, challenge = pkce()
    code = authorize_code(client, cid, REDIRECT, challenge)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": cid,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    first = client.post("/oauth/token", data=form)
    assert first.status_code == 200
    again = client.post("/oauth/token", data=form)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # The refresh token from the first use was revoked with the grant.
    r = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "client_id": cid, "refresh_token": first.json()["refresh_token"]},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_code_is_bound_to_client_and_redirect_uri(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT, REDIRECT + "2"])
    other, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    login_form(client, "admin", ADMIN_PASSWORD)
    verifier, challenge = pkce()
    code = authorize_code(client, cid, REDIRECT, challenge)
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": other,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    code = authorize_code(client, cid, REDIRECT, challenge)
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": cid,
            "redirect_uri": REDIRECT + "2",
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_client_credentials_to_detection_api(ctx, client):
    cid, secret = add_client(ctx, {"camera:a:view", "detections:read"})
    tok = client_token(client, cid, secret)
    assert tok["scope"] == "camera:a:view detections:read" and "refresh_token" not in tok
    publish_detection(ctx, "a")
    publish_detection(ctx, "b")
    r = client.get("/api/cameras/a/detections/latest", headers=bearer(tok["access_token"]))
    assert r.status_code == 200 and r.json()["detections"][0]["label"] == "person"
    r = client.get("/api/cameras/b/detections/latest", headers=bearer(tok["access_token"]))
    assert r.status_code == 403 and r.json()["needs"] == "camera:b:view"
    assert [c["id"] for c in client.get("/api/cameras", headers=bearer(tok["access_token"])).json()["cameras"]] == ["a"]
    # A narrower scope can be asked for; a wider one cannot be had.
    narrow = client_token(client, cid, secret, scope="camera:a:view")
    assert narrow["scope"] == "camera:a:view"
    r = client.get("/api/cameras/a/detections/latest", headers=bearer(narrow["access_token"]))
    assert r.status_code == 403 and r.json()["needs"] == "detections:read"
    wide = client_token(client, cid, secret, scope="admin")  # narrowed to what the client has (RFC 6749 §3.3)
    assert wide["scope"] == "camera:a:view detections:read"
    assert client.get("/api/cameras/b", headers=bearer(wide["access_token"])).status_code == 403
    r = client.post(
        "/oauth/token", data={"grant_type": "client_credentials", "scope": "camera:b:view"}, auth=(cid, secret)
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = client.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "root"}, auth=(cid, secret))
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, "wrong"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = client.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret}
    )  # client_secret_post works too
    assert r.status_code == 200


def test_refresh_rotation_and_reuse_detection(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    login_form(client, "admin", ADMIN_PASSWORD)
    verifier, challenge = pkce()
    code = authorize_code(client, cid, REDIRECT, challenge)
    tok = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": cid,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    ).json()
    r1 = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "client_id": cid, "refresh_token": tok["refresh_token"]}
    )
    assert r1.status_code == 200, r1.text
    new = r1.json()
    assert new["refresh_token"] != tok["refresh_token"] and new["access_token"] != tok["access_token"]
    assert client.get("/api/cameras/a", headers=bearer(new["access_token"])).status_code == 200
    # The old refresh token was rotated out; presenting it again revokes the whole grant.
    r2 = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "client_id": cid, "refresh_token": tok["refresh_token"]}
    )
    assert r2.status_code == 400 and r2.json()["error"] == "invalid_grant"
    r3 = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "client_id": cid, "refresh_token": new["refresh_token"]}
    )
    assert r3.status_code == 400 and r3.json()["error"] == "invalid_grant"


def test_revocation_of_refresh_and_access_tokens(ctx, client):
    cid, _ = add_client(ctx, {"camera:a:view"}, public=True, redirect_uris=[REDIRECT])
    login_form(client, "admin", ADMIN_PASSWORD)
    verifier, challenge = pkce()
    code = authorize_code(client, cid, REDIRECT, challenge)
    tok = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": cid,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    ).json()
    r = client.post(
        "/oauth/revoke", data={"token": tok["refresh_token"], "token_type_hint": "refresh_token", "client_id": cid}
    )
    assert r.status_code == 200
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "client_id": cid, "refresh_token": tok["refresh_token"]}
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # Access tokens (JWTs) can be revoked too: their id is refused until they expire.
    svc, secret = add_client(ctx, {"camera:a:view"})
    access = client_token(client, svc, secret)["access_token"]
    assert client.get("/api/cameras/a", headers=bearer(access)).status_code == 200
    assert client.post("/oauth/revoke", data={"token": access}, auth=(svc, secret)).status_code == 200
    r = client.get("/api/cameras/a", headers=bearer(access))
    assert r.status_code == 401 and r.json() == {"error": "invalid_token", "detail": "token revoked"}
    # Unknown tokens are "revoked" quietly (RFC 7009); another client's token is not theirs to revoke.
    assert client.post("/oauth/revoke", data={"token": "nonsense"}, auth=(svc, secret)).status_code == 200
    other, other_secret = add_client(ctx, {"camera:a:view"})
    mine = client_token(client, svc, secret)["access_token"]
    r = client.post("/oauth/revoke", data={"token": mine}, auth=(other, other_secret))
    assert r.status_code == 400 and client.get("/api/cameras/a", headers=bearer(mine)).status_code == 200


def test_discovery_and_jwks_verify_issued_tokens(ctx, client):
    meta = client.get("/.well-known/openid-configuration").json()
    assert meta["issuer"] == "http://127.0.0.1:8000"
    assert meta["token_endpoint"] == "http://127.0.0.1:8000/oauth/token"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert set(meta["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    jwks = client.get(meta["jwks_uri"].removeprefix("http://127.0.0.1:8000")).json()
    cid, secret = add_client(ctx, {"camera:a:view"})
    access = client_token(client, cid, secret)["access_token"]
    # Another service checks the token with nothing but the published JWKS and a JOSE library.
    token = jwt.decode(access, KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert token.header["kid"] == jwks["keys"][0]["kid"] and token.header["typ"] == "at+jwt"
    assert token.claims["iss"] == meta["issuer"] and token.claims["aud"] == "lookout"
    assert token.claims["sub"] == cid and token.claims["scope"] == "camera:a:view"
    assert client.get("/.well-known/oauth-authorization-server").json() == meta


def test_native_player_uses_a_signed_playlist_link(ctx, client):
    ctx.hls_store.put_segment("a", "seg_1.ts", b"\x47" * 188)
    ctx.hls_store.put_playlist("a", "#EXTM3U\n#EXTINF:1.0,\nseg_1.ts\n")
    cid, secret = add_client(ctx, {"camera:a:view"})
    access = client_token(client, cid, secret)["access_token"]
    link = client.get("/api/cameras/a/hls-link", headers=bearer(access)).json()
    assert link["url"].startswith("http://127.0.0.1:8000/hls/a/index.m3u8?exp=")
    anonymous = client_for(ctx)
    pl = anonymous.get(link["url"].removeprefix("http://127.0.0.1:8000"))
    assert pl.status_code == 200 and pl.headers["cache-control"] == "private, no-cache"
    seg_uri = [line for line in pl.text.splitlines() if line.startswith("seg_1.ts?")][0]
    seg = anonymous.get(f"/hls/a/{seg_uri}")
    assert seg.status_code == 200 and len(seg.content) == 188
    assert seg.headers["cache-control"].startswith("private")
    assert anonymous.get("/hls/a/seg_1.ts").status_code == 401  # without the signature: nothing
    assert client.get("/api/cameras/b/hls-link", headers=bearer(access)).status_code == 403


def test_mode_none_serves_loopback_clients_only(redis_server, tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from gateway.app import create_app

    ctx = make_ctx(redis_server.url, tmp_path, monkeypatch, mode="none")
    StatusStore(ctx.redis).register("a", {"name": "A"})
    app = create_app(ctx)
    local = TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    assert [c["id"] for c in local.get("/api/cameras").json()["cameras"]] == ["a"]
    assert local.get("/auth/me").json()["via"] == "none"
    assert local.get("/login").status_code == 404  # no login flow when auth is off
    remote = TestClient(app, base_url="http://127.0.0.1:8000", client=("192.0.2.7", 50000))
    r = remote.get("/api/cameras")
    assert r.status_code == 403 and r.json() == {
        "error": "forbidden",
        "detail": "auth mode 'none' serves loopback clients only",
    }
    assert not (tmp_path / "auth.sqlite3").exists()  # nothing to store

"""Helpers for the auth tests: a gateway with its own auth DB and keys, logins, tokens, PKCE."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
import threading
from urllib.parse import parse_qs, urlsplit

import uvicorn
from starlette.testclient import TestClient

from conftest import free_port, wait_port
from gateway.app import create_app
from gateway.context import GatewayContext
from pipeline.config import parse_args

ADMIN_PASSWORD = "admin-password-for-tests"  # set through LOOKOUT_ADMIN_PASSWORD by the fixtures
BASE_URL = "http://127.0.0.1:8000"


def make_args(redis_url: str, tmp_path, cameras=("a", "b"), gateway: dict | None = None, **auth):
    """Args of a test gateway: `auth` settings, and other `gateway` settings."""
    auth = {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys"), **auth}
    return parse_args(
        {
            "cameras": [{"id": c, "source": f"{c}.avi"} for c in cameras],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_url,
            "gateway": {"stale_after_s": 2, **(gateway or {}), "auth": auth},
        }
    )


def make_ctx(
    redis_url: str, tmp_path, monkeypatch, cameras=("a", "b"), gateway: dict | None = None, **auth
) -> GatewayContext:
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    return GatewayContext.from_args(make_args(redis_url, tmp_path, cameras, gateway, **auth))


def client_for(ctx: GatewayContext, base_url: str = BASE_URL, address: str = "127.0.0.1") -> TestClient:
    """A client of the app connecting from `address` (default: this host, like a browser on it)."""
    return TestClient(create_app(ctx), base_url=base_url, follow_redirects=False, client=(address, 50000))


def csrf_of(page_html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page_html).group(1)


def login_form(client: TestClient, username: str, password: str, next_url: str = "/"):
    """GET the login page and POST the form; returns the POST's response."""
    page = client.get(f"/login?next={next_url}")
    assert page.status_code == 200, page.text
    return client.post(
        "/login", data={"csrf": csrf_of(page.text), "next": next_url, "username": username, "password": password}
    )


def follow(client: TestClient, response, limit: int = 8):
    """Follow redirects by hand (so each hop can be checked); returns the last response."""
    for _ in range(limit):
        if response.status_code not in (301, 302, 303, 307):
            return response
        response = client.get(response.headers["location"])
    raise AssertionError("too many redirects")


def browser_login(client: TestClient, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    """The full browser login: form, web page's code+PKCE round trip, session cookie."""
    final = follow(client, login_form(client, username, password))
    assert final.status_code == 200, final.text


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def add_client(ctx: GatewayContext, scopes: set[str], **kw):
    """Register a client directly in the store; returns (client_id, secret)."""
    row, secret = ctx.auth.store.add_client("test client", scopes, **kw)
    return row.client_id, secret


def client_token(client: TestClient, client_id: str, secret: str, scope: str | None = None) -> dict:
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    r = client.post("/oauth/token", data=data, auth=(client_id, secret))
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def authorize_code(
    client: TestClient,
    client_id: str,
    redirect_uri: str,
    challenge: str,
    scope: str | None = None,
    state: str = "st4te",
) -> str:
    """Run /oauth/authorize for a logged-in browser and return the code from the redirect."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if scope:
        params["scope"] = scope
    r = client.get("/oauth/authorize", params=params)
    assert r.status_code == 302, r.text
    loc = urlsplit(r.headers["location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == redirect_uri
    q = parse_qs(loc.query)
    assert q["state"] == [state]
    return q["code"][0]


@contextlib.contextmanager
def served_gateway(ctx: GatewayContext):
    """The gateway app served by uvicorn on a free loopback port (for browsers and ffmpeg); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)

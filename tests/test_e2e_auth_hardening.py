"""Issue 13's auth reproductions against the real app (`serve run` of the shipped config, real
redis-server, a real file camera, the real `lookout` CLI on the app's auth database):

- concurrent wrong passwords never check more than `login_max_failures` of them (item 3);
- wrong passwords lock the guesser's address out, not the account's owner elsewhere; a flood of
  random user names is bounded per address and by the ceiling on concurrent password checks (item 4);
- removing a client or user, a new password, a code replay and a refresh-token replay end the
  access tokens already issued, within a few seconds (item 5);
- X-Forwarded-Proto and Host from an untrusted peer are not believed; links and redirects come from
  `public_url` (item 6);
- a refresh token sent with another client's id is refused and stays usable (item 7); the page at /
  has X-Frame-Options and a CSP (item 7).

Requests from 127.0.0.1 come from a trusted proxy (the default `trusted_proxies`), so each test
names its own client address in X-Forwarded-For; the machine's own LAN address is an untrusted peer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from app_fixtures import serve_app
from conftest import ROOT
from rtsp_fixtures import wait_until
from tools.launch import BIN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PUBLIC_URL = "https://lookout.test"
REDIRECT = "http://127.0.0.1:9999/callback"


@pytest.fixture(scope="module")
def app(tmp_path_factory, assets_dir):
    tmp = tmp_path_factory.mktemp("authhard")
    gateway = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]["gateway"]
    gateway["public_url"] = PUBLIC_URL
    cameras = [
        {"id": "door", "source": str(assets_dir / "videos" / "vtest.avi"), "fps": 2, "detect": False, "on_demand": True}
    ]
    with serve_app(tmp, cameras, ray_cpus=6, gateway=gateway) as running:
        running.db = str(tmp / "auth.sqlite3")
        yield running


@pytest.fixture(scope="module")
def dave(app) -> tuple[str, str]:
    """A viewer of every camera for the tests that are not about lock-outs (admin's may be locked)."""
    lookout(app, "users", "add", "dave", "--cameras", "*", "--password-stdin", stdin="dave-password-1\n")
    return "dave", "dave-password-1"


def lookout(app, *argv: str, stdin: str | None = None) -> str:
    """The real `lookout` command on the app's auth database."""
    done = subprocess.run(
        [str(BIN / "lookout"), *argv, "--db", app.db],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def browser(app, address: str | None = None, base: str | None = None) -> httpx.Client:
    """An HTTP client; `address`: the client address the (trusted, loopback) proxy says it has."""
    headers = {"x-forwarded-for": address, "x-forwarded-proto": "https"} if address else {}
    return httpx.Client(base_url=base or app.base, headers=headers, follow_redirects=False, timeout=120)


def login_post(client: httpx.Client, username: str, password: str) -> tuple[dict, dict]:
    """GET the login page; returns the POST to send (its Cookie header, form)."""
    page = client.get("/login?next=/")
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    cookie = {"cookie": "; ".join(f"{k}={v}" for k, v in page.cookies.items())}  # Secure ones too, over http
    return cookie, {"csrf": csrf, "next": "/", "username": username, "password": password}


def log_in(client: httpx.Client, username: str, password: str) -> httpx.Response:
    cookie, form = login_post(client, username, password)
    return client.post("/login", data=form, headers=cookie)


def checked(response: httpx.Response) -> bool:
    """Whether the gateway checked this login's password (a wrong one says so, even when it locks)."""
    return response.status_code == 303 or "Wrong user name or password." in response.text


def access(app, token: str) -> int:
    return httpx.get(app.base + "/api/cameras", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code


def client_credentials(app, client_id: str, secret: str) -> str:
    r = httpx.post(
        app.base + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret), timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def public_client(app) -> str:
    out = lookout(app, "clients", "add", "app", "--public", "--redirect-uri", REDIRECT, "--cameras", "*")
    return re.search(r"client_id: (\S+)", out).group(1)


def user_grant(app, client_id: str, username: str, password: str) -> dict:
    """Log `username` in and run code + PKCE for the public client; the token response, plus the code."""
    with browser(app) as client:
        assert log_in(client, username, password).status_code == 303
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        r = client.get(
            "/oauth/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": REDIRECT,
                "state": "s",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        assert r.status_code == 302, r.text
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        }
        r = client.post("/oauth/token", data=form)
        assert r.status_code == 200, r.text
        return {**r.json(), "code_form": form}


def refresh(app, client_id: str, token: str) -> httpx.Response:
    return httpx.post(
        app.base + "/oauth/token",
        timeout=30,
        data={"grant_type": "refresh_token", "client_id": client_id, "refresh_token": token},
    )


def assert_revoked_soon(app, token: str, what: str) -> None:
    wait_until(lambda: access(app, token) == 401, 10, 0.25, f"the access token to stop working after {what}")


def lan_address() -> str | None:
    """This host's own non-loopback IPv4 address (a peer the gateway does not trust), if any."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    found = [a for a in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out) if not a.startswith("127.")]
    return found[0] if found else None


# -- item 3 -----------------------------------------------------------------------------------------
def test_concurrent_wrong_passwords_check_at_most_max_failures(app):
    client = browser(app, "198.51.100.3")
    posts = [login_post(client, "admin", f"wrong-password-{i}") for i in range(24)]
    start = threading.Barrier(24)

    def guess(post):
        start.wait()
        with browser(app, "198.51.100.3") as c:
            return c.post("/login", data=post[1], headers=post[0])

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(guess, posts))
    assert all(r.status_code in (401, 429, 503) for r in answers), [r.status_code for r in answers]
    n = sum(checked(r) for r in answers)
    assert n <= 5, f"{n} of 24 concurrent wrong passwords were checked ({[r.status_code for r in answers]})"
    # Guesses turned away unchecked (503: too many checks at once) give their count back, so the
    # lock may not have come yet: it comes with the 5th checked guess, not one later.
    after = [log_in(client, "admin", f"wrong-again-{i}").status_code for i in range(5 - n)]
    assert after == ([401] * (4 - n) + [429] if n < 5 else []), (n, after)
    r = log_in(client, "admin", app.admin_password)
    assert r.status_code == 429 and "Too many failed logins" in r.text, (n, after)


# -- item 4 -----------------------------------------------------------------------------------------
def test_wrong_passwords_lock_the_guesser_out_not_the_admin(app):
    guesser = browser(app, "198.51.100.4")
    codes = [log_in(guesser, "admin", "wrong-password!").status_code for _ in range(5)]
    assert codes == [401, 401, 401, 401, 429]
    assert log_in(guesser, "admin", app.admin_password).status_code == 429
    r = log_in(browser(app, "198.51.100.5"), "admin", app.admin_password)  # the real admin, elsewhere
    assert r.status_code == 303, r.text


def test_flood_of_random_names_is_bounded_per_address_and_in_all(app):
    addresses = ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
    posts = [
        (
            addresses[i % 3],
            *login_post(browser(app, addresses[i % 3]), f"nobody{i}-{secrets.token_hex(3)}", "wrong-password!"),
        )
        for i in range(120)
    ]
    start = threading.Barrier(40)

    def guess(post):
        if posts.index(post) < 40:
            start.wait()
        with browser(app, post[0]) as c:
            return c.post("/login", data=post[2], headers=post[1])

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(guess, posts))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {401, 429, 503}, codes
    n = sum(checked(r) for r in answers)
    assert n <= 3 * 20, f"{n} of 120 passwords checked: at most 20 failures per address"
    busy = [r for r in answers if r.status_code == 503]
    assert busy and all(r.headers["retry-after"] == "1" for r in busy)  # the ceiling on concurrent checks
    r = log_in(browser(app, "198.51.100.13"), "admin", app.admin_password)
    assert r.status_code == 303, r.text


# -- item 5 -----------------------------------------------------------------------------------------
def test_removing_a_client_ends_its_access_tokens(app):
    out = lookout(app, "clients", "add", "svc", "--cameras", "*")
    cid, secret = re.search(r"client_id: (\S+)", out).group(1), re.search(r"client_secret: (\S+)", out).group(1)
    token = client_credentials(app, cid, secret)
    assert access(app, token) == 200
    lookout(app, "clients", "remove", cid)
    assert_revoked_soon(app, token, "lookout clients remove")


def test_removing_a_user_or_changing_the_password_ends_their_access_tokens(app):
    cid = public_client(app)
    for name in ("bob", "carol"):
        lookout(app, "users", "add", name, "--cameras", "*", "--password-stdin", stdin=f"{name}-password-1\n")
    bob, carol = user_grant(app, cid, "bob", "bob-password-1"), user_grant(app, cid, "carol", "carol-password-1")
    assert access(app, bob["access_token"]) == 200 and access(app, carol["access_token"]) == 200
    lookout(app, "users", "remove", "bob")
    lookout(app, "users", "passwd", "carol", "--password-stdin", stdin="carol-password-2\n")
    assert_revoked_soon(app, bob["access_token"], "lookout users remove")
    assert_revoked_soon(app, carol["access_token"], "lookout users passwd")
    again = user_grant(app, cid, "carol", "carol-password-2")
    assert access(app, again["access_token"]) == 200  # issued after the change: works


def test_code_and_refresh_token_replays_end_the_grants_access_tokens(app, dave):
    cid = public_client(app)
    first = user_grant(app, cid, *dave)
    r = httpx.post(app.base + "/oauth/token", data=first["code_form"], timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert_revoked_soon(app, first["access_token"], "a code replay")
    second = user_grant(app, cid, *dave)
    rotated = refresh(app, cid, second["refresh_token"])
    assert rotated.status_code == 200
    assert refresh(app, cid, second["refresh_token"]).status_code == 400  # the replay
    assert_revoked_soon(app, second["access_token"], "a refresh token replay")
    assert_revoked_soon(app, rotated.json()["access_token"], "a refresh token replay")


# -- item 6 -----------------------------------------------------------------------------------------
def test_headers_of_an_untrusted_peer_are_not_believed_and_links_use_public_url(app):
    lan = lan_address()
    if lan is None:
        pytest.skip("this host has no non-loopback address to connect from as an untrusted peer")
    out = lookout(app, "clients", "add", "svc6", "--cameras", "*")
    cid, secret = re.search(r"client_id: (\S+)", out).group(1), re.search(r"client_secret: (\S+)", out).group(1)
    remote = app.base.replace("127.0.0.1", lan)
    for headers in ({"X-Forwarded-Proto": "https"}, {"Host": "127.0.0.1"}):
        r = httpx.post(
            remote + "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(cid, secret),
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["error"] == "insecure_transport", (headers, r.text)
    token = client_credentials(app, cid, secret)
    evil = {"Authorization": f"Bearer {token}", "Host": "evil.example"}
    link = httpx.get(remote + "/api/cameras/door/hls-link", headers=evil, timeout=30).json()["url"]
    assert link.startswith(PUBLIC_URL + "/hls/door/index.m3u8?exp="), link
    r = httpx.get(remote + "/api/cameras/", headers=evil, timeout=30)
    assert r.status_code == 307 and r.headers["location"] == PUBLIC_URL + "/api/cameras"


# -- item 7 -----------------------------------------------------------------------------------------
def test_refresh_token_with_another_clients_id_is_refused_and_stays_usable(app, dave):
    mine, other = public_client(app), public_client(app)
    tokens = user_grant(app, mine, *dave)
    r = refresh(app, other, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = refresh(app, mine, tokens["refresh_token"])
    assert r.status_code == 200, r.text


def test_the_page_cannot_be_framed(app, dave):
    with browser(app) as client:
        assert log_in(client, *dave).status_code == 303
        r = client.get("/auth/start?next=/")
        while r.status_code in (302, 303):
            r = client.get(r.headers["location"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert json.loads(client.get("/auth/me").text)["name"] == "dave"

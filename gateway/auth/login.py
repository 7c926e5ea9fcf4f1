"""The browser's way in: login page (CSRF-protected, throttled), the web page's own OAuth
code+PKCE round trip that turns a login into a session cookie, `/auth/me` and logout.

Flow: GET / without a session -> /login?next=/ -> POST /login (user, password, csrf) sets the
login cookie -> /auth/start makes a PKCE verifier and state -> /oauth/authorize issues a code
for the built-in public client `lookout-web` -> /auth/callback checks state, exchanges the code
with the verifier and sets the session cookie (HttpOnly, SameSite=Lax, Secure on https).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
import threading
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.auth import http as h
from gateway.auth import signed
from gateway.auth.server import WEB_CLIENT_ID, WEB_REDIRECT_URI
from gateway.auth.throttle import AttemptLimits

if TYPE_CHECKING:
    from gateway.auth.bootstrap import AuthContext

log = logging.getLogger(__name__)
FLOW_TTL_S = 600

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Lookout · log in</title><link rel="stylesheet" href="/static/style.css"></head>
<body class="login"><main class="login-box">
<h1>Lookout</h1>
{message}
<form method="post" action="/login" autocomplete="on">
  <input type="hidden" name="csrf" value="{csrf}">
  <input type="hidden" name="next" value="{next}">
  <label>User name <input name="username" id="username" autocomplete="username" required maxlength="64" value="{username}"></label>
  <label>Password <input name="password" id="password" type="password" autocomplete="current-password" required maxlength="1024"></label>
  <button type="submit" id="login">Log in</button>
</form>
</main></body></html>
"""


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def make_routes(auth: "AuthContext") -> list[Route]:
    cfg, store = auth.cfg, auth.store
    assert store is not None and auth.keys is not None  # bootstrap sets them whenever auth is on
    csrf_key = auth.keys.subkey("csrf")
    flow_key = auth.keys.subkey("web-flow")

    attempts = AttemptLimits(store, cfg)
    checks = threading.BoundedSemaphore(cfg.login_max_concurrent_checks)  # scrypt runs at once, this process

    def page(
        request: Request,
        next_url: str,
        message: str = "",
        status: int = 200,
        username: str = "",
        retry_after_s: float = 0,
    ) -> Response:
        token = request.cookies.get(auth.csrf_cookie) or secrets.token_urlsafe(24)
        body = PAGE.format(
            csrf=signed.mac(csrf_key, token),
            next=html.escape(next_url, quote=True),
            username=html.escape(username, quote=True),
            message=f'<p class="message" role="alert">{html.escape(message)}</p>' if message else "",
        )
        headers = {"Cache-Control": "no-store"}  # X-Frame-Options and CSP: gateway.app's HTML middleware
        if retry_after_s:
            headers["Retry-After"] = str(int(retry_after_s) + 1)
        resp = HTMLResponse(body, status_code=status, headers=headers)
        h.set_cookie(resp, request, cfg, auth.csrf_cookie, token, max_age=3600, path="/login", samesite="strict")
        return resp

    def continue_to(next_url: str) -> str:
        """Where a logged-in browser goes next: an authorize request, or the web page's own flow."""
        if next_url.startswith("/oauth/authorize?"):
            return next_url
        return f"/auth/start?next={quote(next_url, safe='')}"

    async def login(request: Request) -> Response:
        if auth.oidc is not None:
            return RedirectResponse(
                f"/auth/oidc/start?next={quote(h.safe_next(request.query_params.get('next')), safe='')}",
                status_code=302,
            )
        next_url = h.safe_next(request.query_params.get("next"))
        if request.method == "GET":
            if auth.sso_user(request) is not None:
                return RedirectResponse(continue_to(next_url), status_code=302)
            return page(request, next_url)
        if not h.transport_ok(request, cfg):
            return page(request, next_url, "Logging in needs https: ask your administrator for the https address.", 400)
        try:
            form = await h.read_form(request, cfg.max_body_bytes)
        except ValueError as exc:
            return page(request, next_url, f"Bad form: {exc}", 400)
        next_url = h.safe_next(h.first(form, "next"))
        cookie = request.cookies.get(auth.csrf_cookie)
        if not cookie or not signed.check_mac(csrf_key, cookie, h.first(form, "csrf")):
            return page(
                request,
                next_url,
                "The form expired or did not come from this page (CSRF check failed). Please try again.",
                403,
            )
        username = (h.first(form, "username") or "").strip()[:64]
        password = h.first(form, "password") or ""
        client = h.client_address(request)
        account = f"user:{username.lower()}"
        wait, locks = attempts.begin(account, client)  # counted before the check: concurrent guesses cannot race it
        if wait > 0:
            return page(
                request,
                next_url,
                f"Too many failed logins. Try again in {int(wait) + 1} s.",
                429,
                username,
                retry_after_s=wait,
            )
        if not checks.acquire(blocking=False):
            attempts.refund(account, client, succeeded=False)
            log.warning(
                "login of %r from %s refused: %d password checks already running",
                username,
                client,
                cfg.login_max_concurrent_checks,
            )
            return page(
                request, next_url, "Too many logins at once. Try again in a second.", 503, username, retry_after_s=0.5
            )
        try:
            user = await run_in_threadpool(store.authenticate, username, password)
        finally:
            checks.release()
        if user is None:
            log.warning("failed login for %r from %s", username, client)
            if locks > 0:
                return page(
                    request,
                    next_url,
                    f"Wrong user name or password. Too many failed logins: try again in {int(locks)} s.",
                    429,
                    username,
                    retry_after_s=locks - 1,
                )
            return page(request, next_url, "Wrong user name or password.", 401, username)
        attempts.refund(account, client, succeeded=True)
        store.purge_expired()
        log.info("user %s logged in from %s", user.username, client)
        sid = store.create_session("sso", user.username, " ".join(sorted(user.scopes)), cfg.session_ttl_s)
        resp = RedirectResponse(continue_to(next_url), status_code=303)
        h.set_cookie(resp, request, cfg, auth.sso_cookie, sid, max_age=cfg.session_ttl_s)
        h.clear_cookie(resp, auth.csrf_cookie, path="/login")
        return resp

    def start(request: Request) -> Response:
        """Begin the web page's authorization code + PKCE flow."""
        next_url = h.safe_next(request.query_params.get("next"))
        verifier, challenge = _pkce_pair()
        state = secrets.token_urlsafe(24)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": WEB_CLIENT_ID,
                "redirect_uri": WEB_REDIRECT_URI,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        resp = RedirectResponse(f"/oauth/authorize?{query}", status_code=302)
        flow = signed.sign(flow_key, {"state": state, "verifier": verifier, "next": next_url}, FLOW_TTL_S)
        h.set_cookie(resp, request, cfg, auth.flow_cookie, flow, max_age=FLOW_TTL_S, path="/auth")
        return resp

    async def callback(request: Request) -> Response:
        """Finish the flow: check state, exchange the code with the verifier, set the session cookie."""
        flow = signed.unsign(flow_key, request.cookies.get(auth.flow_cookie))
        state = request.query_params.get("state", "")
        if flow is None or not hmac.compare_digest(str(flow.get("state", "")), state):
            return JSONResponse(
                {"error": "invalid_state", "detail": "login flow expired or forged; start again at /login"},
                status_code=400,
            )
        if "error" in request.query_params:
            return JSONResponse({"error": request.query_params["error"][:100]}, status_code=400)
        assert auth.server is not None and auth.tokens is not None  # set by bootstrap whenever auth is on
        try:
            token = await run_in_threadpool(
                auth.server.exchange_code,
                request.query_params.get("code", ""),
                flow["verifier"],
                WEB_REDIRECT_URI,
                WEB_CLIENT_ID,
            )
        except OAuth2Error as exc:
            return JSONResponse({"error": exc.error, "detail": exc.description}, status_code=400)
        claims = auth.tokens.verify(token["access_token"])
        refresh = store.get_refresh(token["refresh_token"])
        sid = store.create_session(
            "web", claims["sub"], token["scope"], cfg.session_ttl_s, family=refresh.family if refresh else None
        )
        resp = RedirectResponse(h.safe_next(flow.get("next")), status_code=302)
        h.set_cookie(resp, request, cfg, auth.session_cookie, sid, max_age=cfg.session_ttl_s)
        h.clear_cookie(resp, auth.flow_cookie, path="/auth")
        return resp

    async def logout(request: Request) -> Response:
        """End the session and the login (POST only; cross-site posts carry no SameSite=Lax cookie)."""
        origin = request.headers.get("origin")
        if (
            origin
            and origin != f"{request.url.scheme}://{request.url.netloc}"
            and origin.split("://")[-1] != request.url.netloc
        ):
            return JSONResponse(
                {"error": "forbidden", "detail": f"cross-site logout from {origin[:100]!r}"}, status_code=403
            )
        for name in (auth.session_cookie, auth.sso_cookie):
            row = store.delete_session(request.cookies.get(name, ""))
            if row is not None and row.family:
                store.revoke_family(row.family)
        resp = RedirectResponse("/login", status_code=303)
        for name in (auth.session_cookie, auth.sso_cookie):
            h.clear_cookie(resp, name)
        return resp

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/auth/start", start, methods=["GET"]),
        Route("/auth/callback", callback, methods=["GET"]),
    ]

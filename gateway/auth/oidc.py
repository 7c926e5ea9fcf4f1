"""Logins at an external OpenID Connect provider, and its access tokens accepted as bearer tokens.

Login: /login -> /auth/oidc/start (authlib's Starlette client: discovery, state, nonce, PKCE S256)
-> the provider -> /auth/oidc/callback (code exchange, ID token checked against the provider's
JWKS) -> claims mapped to a Lookout role and cameras -> the usual session cookie.
The provider's JWT access tokens are verified with its JWKS (iss, aud, exp) and mapped the same
way. authlib keeps its per-login state in `request.session`; Lookout gives it a signed, short-lived
cookie instead of a server-side session.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from authlib.integrations.starlette_client import OAuth, OAuthError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.auth import http as h
from gateway.auth import scopes as sc
from gateway.auth import signed
from gateway.auth.tokens import TokenError, peek_claims, verify_jwt
from pipeline.config import OidcConfig

if TYPE_CHECKING:
    from gateway.auth.bootstrap import AuthContext

log = logging.getLogger(__name__)
ASYMMETRIC_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
JWKS_REFRESH_MIN_S = 60
STATE_TTL_S = 600
CLIENT_SECRET_ENV = "LOOKOUT_OIDC_CLIENT_SECRET"


def claim(claims: dict, path: str):
    """A claim by name; dots walk into nested objects (realm_access.roles)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def map_claims(cfg: OidcConfig, claims: dict) -> tuple[str, frozenset[str]]:
    """(user name, Lookout scopes) from a provider's claims; PermissionError when no role maps."""
    name = claims.get(cfg.username_claim) or claims.get("sub")
    if not isinstance(name, str) or not name:
        raise PermissionError("the provider's token names no user (no 'sub')")
    groups = claim(claims, cfg.roles_claim) or []
    if isinstance(groups, str):
        groups = groups.split()
    groups = [g for g in groups if isinstance(g, str)]
    roles = {cfg.role_map[g] for g in groups if g in cfg.role_map}
    if "admin" in roles:
        return name, frozenset(sc.for_role("admin"))
    if "viewer" in roles:
        cams = {c for g in groups for c in cfg.camera_map.get(g, [])}
        return name, frozenset(sc.for_role("viewer", sorted(cams)))
    raise PermissionError(
        f"no Lookout role for {name!r}: {cfg.roles_claim} {sorted(groups)} map to none (gateway.auth.oidc.role_map)"
    )


class OidcLogin:
    """The external provider: its login flow and its tokens."""

    def __init__(self, cfg: OidcConfig, auth: "AuthContext"):
        import os

        self.cfg, self.auth = cfg, auth
        secret = cfg.client_secret.get_secret_value() if cfg.client_secret else os.environ.get(CLIENT_SECRET_ENV)
        self.oauth = OAuth()
        self.oauth.register(
            "provider",
            client_id=cfg.client_id,
            client_secret=secret,
            server_metadata_url=f"{cfg.issuer}/.well-known/openid-configuration",
            client_kwargs={
                "scope": " ".join(cfg.scopes),
                "code_challenge_method": "S256",
                "timeout": cfg.http_timeout_s,
            },
        )
        self.client = self.oauth.create_client("provider")
        assert auth.keys is not None  # bootstrap sets the keys before it makes an OidcLogin
        self.state_key = auth.keys.subkey("oidc-state")
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    def owns(self, token: str) -> bool:
        """True when the (unverified) token says the provider issued it."""
        try:
            return peek_claims(token).get("iss") == self.cfg.issuer
        except TokenError:
            return False

    async def _keyset(self, force: bool = False) -> KeySet:
        if self._keys is None or (force and time.time() - self._keys_at > JWKS_REFRESH_MIN_S):
            self._keys = KeySet.import_key_set(await self.client.fetch_jwk_set(force=True))
            self._keys_at = time.time()
        return self._keys

    async def verify_access_token(self, token: str) -> tuple[str, frozenset[str]]:
        """(name, scopes) of a valid provider access token; TokenError otherwise."""
        try:
            keys = await self._keyset()
        except Exception as exc:  # provider unreachable: a clean 401, not a crash
            raise TokenError(f"cannot reach the identity provider ({type(exc).__name__})") from None
        audience = self.cfg.audience or self.cfg.client_id
        try:
            claims = verify_jwt(token, keys, ASYMMETRIC_ALGS, self.cfg.issuer, audience)
        except TokenError as exc:
            if "invalid_key_id" not in str(exc) and "kid" not in str(exc):
                raise
            claims = verify_jwt(token, await self._keyset(force=True), ASYMMETRIC_ALGS, self.cfg.issuer, audience)
        try:
            return map_claims(self.cfg, claims)
        except PermissionError as exc:
            raise TokenError(str(exc)) from None

    def make_routes(self) -> list[Route]:
        auth, cfg = self.auth, self.auth.cfg

        async def start(request: Request) -> Response:
            next_url = h.safe_next(request.query_params.get("next"))
            request.scope["session"] = {}
            redirect_uri = f"{auth.public_url}/auth/oidc/callback"  # never from the request's Host header
            try:
                resp = await self.client.authorize_redirect(request, redirect_uri)
            except Exception as exc:  # discovery failed: say so, briefly
                log.warning("OIDC provider %s unreachable: %s", self.cfg.issuer, exc)
                return JSONResponse(
                    {"error": "identity provider unreachable", "issuer": self.cfg.issuer}, status_code=502
                )
            state = signed.sign(self.state_key, {"s": request.scope["session"], "next": next_url}, STATE_TTL_S)
            h.set_cookie(resp, request, cfg, auth.flow_cookie, state, max_age=STATE_TTL_S, path="/auth")
            return resp

        async def callback(request: Request) -> Response:
            saved = signed.unsign(self.state_key, request.cookies.get(auth.flow_cookie))
            if saved is None:
                return JSONResponse(
                    {"error": "invalid_state", "detail": "login flow expired; start again at /login"}, status_code=400
                )
            request.scope["session"] = saved["s"]
            try:
                token = await self.client.authorize_access_token(request)
                claims = dict(token.get("userinfo") or {})
                if claim(claims, self.cfg.roles_claim) is None and "userinfo_endpoint" in self.client.server_metadata:
                    claims.update(await self.client.userinfo(token=token))
                name, scopes = map_claims(self.cfg, claims)
            except OAuthError as exc:
                return JSONResponse({"error": exc.error or "oauth_error", "detail": exc.description}, status_code=400)
            except PermissionError as exc:
                return JSONResponse({"error": "forbidden", "detail": str(exc)}, status_code=403)
            except Exception as exc:  # an unreachable or misbehaving provider
                log.warning("OIDC login failed: %s", exc)
                return JSONResponse({"error": "identity provider error"}, status_code=502)
            log.info("user %s logged in through %s", name, self.cfg.issuer)
            assert auth.store is not None  # set by bootstrap whenever auth is on
            sid = auth.store.create_session("web", f"oidc:{name}", sc.to_str(scopes), cfg.session_ttl_s)
            resp = RedirectResponse(h.safe_next(saved.get("next")), status_code=302)
            h.set_cookie(resp, request, cfg, auth.session_cookie, sid, max_age=cfg.session_ttl_s)
            h.clear_cookie(resp, auth.flow_cookie, path="/auth")
            return resp

        return [
            Route("/auth/oidc/start", start, methods=["GET"]),
            Route("/auth/oidc/callback", callback, methods=["GET"], name="oidc_callback"),
        ]

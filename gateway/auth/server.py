"""Lookout's OAuth 2.1 authorization server: authlib's AuthorizationServer adapted to Starlette.

Grants: authorization code with PKCE (S256, required for every client), client credentials,
refresh token (rotated on every use; reuse of a rotated token revokes the whole grant).
Endpoints: /oauth/authorize, /oauth/token, /oauth/revoke (RFC 7009), /oauth/jwks.json and
/.well-known/openid-configuration (+ /.well-known/oauth-authorization-server).

authlib is synchronous and framework-neutral: the routes read the (bounded) request first,
hand authlib a `PreparedRequest`, and turn its (status, body, headers) back into a Response.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
)
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.auth import http as h
from gateway.auth import scopes as sc
from gateway.auth.store import AuthStore, ClientRow, CodeRow, RefreshRow, User, digest
from gateway.auth.throttle import AttemptLimits
from gateway.auth.tokens import AccessTokens, TokenError

if TYPE_CHECKING:
    from gateway.auth.bootstrap import AuthContext

log = logging.getLogger(__name__)
WEB_CLIENT_ID = "lookout-web"
WEB_REDIRECT_URI = "/auth/callback"
SECRET_METHODS = ["client_secret_basic", "client_secret_post"]
ALL_METHODS = [*SECRET_METHODS, "none"]


# -- the adapter ---------------------------------------------------------------------------------
@dataclass
class PreparedRequest:
    """What authlib needs of an HTTP request, read in full beforehand (authlib is synchronous)."""

    method: str
    uri: str
    headers: Mapping[str, str]  # case-insensitive (starlette Headers)
    query: dict[str, list[str]] = field(default_factory=dict)
    form: dict[str, list[str]] = field(default_factory=dict)


async def prepare(request: Request, max_bytes: int) -> PreparedRequest:
    """Read a Starlette request (body bounded by `max_bytes`) into a PreparedRequest.

    The URI is given to authlib as https: the transport was already checked (h.transport_ok),
    TLS being the reverse proxy's job.
    """
    query: dict[str, list[str]] = defaultdict(list)
    for k, v in request.query_params.multi_items():
        query[k].append(v)
    form = await h.read_form(request, max_bytes) if request.method == "POST" else {}
    uri = f"https://{request.url.netloc or 'lookout'}{request.url.path}"
    return PreparedRequest(request.method, uri, request.headers, dict(query), form)


class _Payload(OAuth2Payload):
    def __init__(self, values: dict[str, list[str]]):
        self._datalist = values

    @property
    def data(self) -> dict[str, str]:
        return {k: v[0] for k, v in self._datalist.items() if v}

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class _Request(OAuth2Request):
    def __init__(self, prepared: PreparedRequest):
        super().__init__(prepared.method, prepared.uri, headers=prepared.headers)
        self._query = {k: v[0] for k, v in prepared.query.items() if v}
        self._form = {k: v[0] for k, v in prepared.form.items() if v}
        merged = {k: list(v) for k, v in prepared.query.items()}
        for k, v in prepared.form.items():
            merged.setdefault(k, []).extend(v)
        self.payload = _Payload(merged)

    @property
    def args(self) -> dict[str, str]:
        return self._query

    @property
    def form(self) -> dict[str, str]:
        return self._form


# -- models ----------------------------------------------------------------------------------
class OAuthClient(ClientMixin):
    """A stored client as authlib sees it."""

    def __init__(self, row: ClientRow):
        self.row = row

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.row.redirect_uris[0] if len(self.row.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        if not scope:
            return sc.to_str(self.row.scopes)
        try:
            return sc.to_str(sc.narrow(sc.parse(scope), self.row.scopes))
        except ValueError:
            return None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.row.redirect_uris  # exact match only: no open redirects

    def check_client_secret(self, client_secret: str) -> bool:
        # cast: not None, checked on the left
        return bool(self.row.secret_hash) and hmac.compare_digest(
            digest(client_secret), cast(str, self.row.secret_hash)
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if self.row.is_public else method in SECRET_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.row.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.row.grant_types


class AuthCode(AuthorizationCodeMixin):
    def __init__(self, row: CodeRow):
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class RefreshToken(TokenMixin):
    def __init__(self, row: RefreshRow):
        self.row = row

    def check_client(self, client: OAuthClient) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.row.expires_at - time.time()))

    def is_expired(self) -> bool:
        return self.row.expires_at < time.time()

    def is_revoked(self) -> bool:
        return self.row.revoked


class AccessTokenRef(TokenMixin):
    """A (JWT) access token presented for revocation."""

    def __init__(self, claims: dict):
        self.claims = claims

    def check_client(self, client: OAuthClient) -> bool:
        return self.claims.get("client_id") == client.get_client_id()

    def get_scope(self) -> str:
        return self.claims.get("scope", "")


# -- grants ----------------------------------------------------------------------------------
class PKCE(CodeChallenge):
    """PKCE as OAuth 2.1 wants it: a code_challenge on every authorization request, S256 only."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': PKCE with S256 is required")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class _OfGrant:
    """Access tokens of a code or refresh grant name the grant (the refresh token family), so that
    revoking the grant (replay, logout, RFC 7009) revokes them as well."""

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None, include_refresh_token=True):
        code, refresh = self.request.authorization_code, self.request.refresh_token
        family = code.row.family if code is not None else refresh.row.family if refresh is not None else None
        return self.server._generate_token(
            grant_type or self.GRANT_TYPE,
            self.request.client,
            user,
            scope,
            expires_in,
            include_refresh_token,
            grant_id=family,
        )


class CodeGrant(_OfGrant, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        srv: LookoutAuthServer = self.server
        user: User = request.user
        scope = sc.to_str(sc.narrow(sc.parse(request.scope), user.scopes))
        data = request.payload.data
        srv.store.save_code(
            code,
            request.client.get_client_id(),
            user.username,
            request.payload.redirect_uri,
            scope,
            data.get("code_challenge"),
            data.get("code_challenge_method"),
            data.get("nonce"),
            srv.cfg.auth_code_ttl_s,
        )

    def query_authorization_code(self, code: str, client: OAuthClient) -> AuthCode | None:
        store: AuthStore = self.server.store
        row = store.get_code(code) if isinstance(code, str) and len(code) <= 256 else None
        if row is None or row.client_id != client.get_client_id():
            return None
        if not store.use_code(row.code_hash):
            # A code used twice: per RFC 6749 §4.1.2 revoke what the first use got.
            log.warning("authorization code of client %s reused: revoking that grant", row.client_id)
            store.revoke_family(row.family)
            return None
        if row.expires_at < time.time():
            return None
        return AuthCode(row)

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        pass  # marked used atomically when queried

    def authenticate_user(self, authorization_code: AuthCode) -> User | None:
        return self.server.store.get_user(authorization_code.row.username)


class RefreshGrant(_OfGrant, grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        store: AuthStore = self.server.store
        row = store.get_refresh(refresh_token) if isinstance(refresh_token, str) and len(refresh_token) <= 256 else None
        if row is None or row.client_id != self.request.client.get_client_id():
            return None  # another client's token is refused untouched: it stays usable by its own client
        if row.revoked or not store.revoke_refresh(row.token_hash):
            # A rotated (or revoked) token used again: someone has a copy; end the whole grant.
            log.warning("revoked refresh token of client %s presented: revoking that grant", row.client_id)
            store.revoke_family(row.family)
            return None
        if row.expires_at < time.time():
            return None
        return RefreshToken(row)

    def authenticate_user(self, refresh_token: RefreshToken) -> User | None:
        return self.server.store.get_user(refresh_token.row.username) if refresh_token.row.username else None

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        pass  # revoked atomically when presented


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = SECRET_METHODS


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ALL_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None):
        srv: LookoutAuthServer = self.server
        if not isinstance(token_string, str) or len(token_string) > 8192:
            return None
        if token_type_hint != "access_token":
            row = srv.store.get_refresh(token_string)
            if row is not None:
                return RefreshToken(row)
        try:
            return AccessTokenRef(srv.tokens.verify(token_string))
        except TokenError:
            return None

    def revoke_token(self, token, request) -> None:
        srv: LookoutAuthServer = self.server
        if isinstance(token, RefreshToken):
            srv.store.revoke_family(token.row.family)
        else:
            srv.store.revoke_jti(token.claims["jti"], float(token.claims["exp"]))


# -- the server ----------------------------------------------------------------------------------
class LookoutAuthServer(AuthorizationServer):
    """authlib's AuthorizationServer over Lookout's store and JWT access tokens."""

    def __init__(self, store: AuthStore, tokens: AccessTokens, cfg):
        super().__init__()
        self.store, self.tokens, self.cfg = store, tokens, cfg
        self.register_token_generator("default", self._generate_token)
        self.register_grant(CodeGrant, [PKCE(required=True)])
        self.register_grant(RefreshGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_endpoint(Revocation)

    def query_client(self, client_id: str) -> OAuthClient | None:
        row = self.store.get_client(client_id)
        return OAuthClient(row) if row else None

    def validate_requested_scope(self, scope: str | None) -> None:
        try:
            sc.parse(scope)
        except ValueError as exc:
            raise InvalidScopeError(str(exc)) from None

    def _generate_token(
        self,
        grant_type: str,
        client: OAuthClient,
        user: User | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
        grant_id: str | None = None,
    ) -> dict:
        """A JWT access token (scope narrowed to what client and user may have) and a refresh token."""
        import secrets

        requested = sc.parse(scope) if scope else set(client.row.scopes)
        granted = sc.narrow(requested, client.row.scopes)
        if user is not None:
            granted = sc.narrow(granted, user.scopes)
        if not granted - set(sc.IDENTITY):
            raise InvalidScopeError("none of the requested scopes is allowed")
        scope_str = sc.to_str(granted)
        sub = user.username if user else client.get_client_id()
        access = self.tokens.issue(sub, scope_str, client.get_client_id(), grant_id=grant_id)
        token = {"token_type": "Bearer", "access_token": access, "expires_in": self.tokens.ttl_s, "scope": scope_str}
        if include_refresh_token and user is not None:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_token(self, token: dict, request: OAuth2Request) -> None:
        if "refresh_token" not in token:
            return
        if request.authorization_code is not None:
            family = request.authorization_code.row.family
        elif request.refresh_token is not None:
            family = request.refresh_token.row.family
        else:
            raise InvalidGrantError("refresh token without a grant")
        self.store.save_refresh(
            token["refresh_token"],
            family,
            request.client.get_client_id(),
            request.user.username if request.user else None,
            token["scope"],
            self.cfg.refresh_token_ttl_s,
        )

    def create_oauth2_request(self, request) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return _Request(request)

    def create_json_request(self, request):
        raise NotImplementedError("Lookout has no JSON OAuth endpoints")

    def handle_response(self, status: int, body, headers) -> Response:
        headers = dict(headers or [])
        if isinstance(body, dict):
            headers.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=headers)
        return Response(body or "", status_code=status, headers=headers)

    def send_signal(self, name: str, *args, **kwargs) -> None:
        if name == "after_revoke_token":
            log.info("token of client %s revoked", cast(OAuthClient, kwargs.get("client")).get_client_id())

    def exchange_code(self, code: str, verifier: str, redirect_uri: str, client_id: str) -> dict:
        """The token endpoint called in-process (the web page's own code exchange); raises OAuth2Error."""
        import json

        prepared = PreparedRequest(
            "POST",
            "https://lookout/oauth/token",
            Headers(),
            {},
            {
                "grant_type": ["authorization_code"],
                "code": [code],
                "code_verifier": [verifier],
                "redirect_uri": [redirect_uri],
                "client_id": [client_id],
            },
        )
        response = self.create_token_response(prepared)
        body = json.loads(response.body)
        if response.status_code != 200:
            raise OAuth2Error(
                description=body.get("error_description"), status_code=response.status_code, error=body.get("error")
            )
        return body


def metadata(issuer: str) -> dict:
    """The discovery document (RFC 8414 fields; also served at the OpenID path, but the built-in
    server issues access tokens only, no ID tokens)."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "jwks_uri": f"{issuer}/oauth/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ALL_METHODS,
        "revocation_endpoint_auth_methods_supported": ALL_METHODS,
        "scopes_supported": [sc.ADMIN, sc.DETECTIONS_READ, sc.ALL_CAMERAS, "camera:<id>:view"],
        "access_token_signing_alg_values_supported": ["RS256"],
    }


def secret_client_id(prepared: PreparedRequest) -> str | None:
    """The client id of a request that presents a client secret (HTTP Basic or form), else None."""
    header = prepared.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        import base64
        from urllib.parse import unquote_plus

        try:
            client_id, sep, _ = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except ValueError:
            return None
        return unquote_plus(client_id)[:64] if sep else None
    if prepared.form.get("client_secret"):
        return (prepared.form.get("client_id") or [""])[0][:64]
    return None


def make_routes(auth: "AuthContext") -> list[Route]:
    """The OAuth endpoints and discovery documents."""
    server = auth.server
    assert server is not None and auth.store is not None  # bootstrap sets them whenever auth is on
    cfg = auth.cfg
    attempts = AttemptLimits(auth.store, cfg)

    def throttled(request: Request, prepared: PreparedRequest, respond) -> Response:
        """`respond(prepared)` unless the presented client secret's (client, address) or the address is
        locked out; a wrong secret counts towards the lock-out. Counted after the check, unlike
        passwords: a secret has 256 random bits, so a race wins nothing, and counting first would
        lock out a busy client's concurrent token requests."""
        client_id = secret_client_id(prepared)
        if client_id is None:
            return respond(prepared)
        address = h.client_address(request)
        wait = attempts.locked_for(f"client:{client_id}", address)
        if wait > 0:
            return JSONResponse(
                {
                    "error": "slow_down",
                    "error_description": f"too many failed client authentications; try again in {int(wait) + 1} s",
                },
                status_code=429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        response = respond(prepared)
        if response.status_code in (400, 401) and b'"invalid_client"' in response.body:
            log.warning("failed client authentication of %r from %s", client_id, address)
            attempts.record_failure(f"client:{client_id}", address)
        return response

    def discovery(request: Request) -> JSONResponse:
        return JSONResponse(metadata(auth.issuer), headers={"Cache-Control": "public, max-age=300"})

    def jwks(request: Request) -> JSONResponse:
        assert auth.keys is not None  # set by bootstrap whenever auth is on
        return JSONResponse(auth.keys.jwks(), headers={"Cache-Control": "public, max-age=300"})

    async def token(request: Request) -> Response:
        if not h.transport_ok(request, cfg):
            return h.insecure_transport_response()
        try:
            prepared = await prepare(request, cfg.max_body_bytes)
        except ValueError as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)}, status_code=400)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(throttled, request, prepared, server.create_token_response)

    async def revoke(request: Request) -> Response:
        if not h.transport_ok(request, cfg):
            return h.insecure_transport_response()
        try:
            prepared = await prepare(request, cfg.max_body_bytes)
        except ValueError as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)}, status_code=400)
        return throttled(request, prepared, lambda p: server.create_endpoint_response("revocation", p))

    async def authorize(request: Request) -> Response:
        if not h.transport_ok(request, cfg):
            return h.insecure_transport_response()
        user = auth.sso_user(request)
        if user is None:
            here = request.url.path + ("?" + request.url.query if request.url.query else "")
            from urllib.parse import quote

            return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=302)
        prepared = await prepare(request, cfg.max_body_bytes)
        try:
            grant = server.get_consent_grant(prepared, end_user=user)
        except OAuth2Error as error:
            if error.redirect_uri:  # the redirect URI was checked against the client: safe to go back
                return server.handle_error_response(None, error)
            return JSONResponse({"error": error.error, "error_description": error.description}, status_code=400)
        return server.create_authorization_response(grant.request, grant_user=user, grant=grant)

    return [
        Route("/.well-known/openid-configuration", discovery),
        Route("/.well-known/oauth-authorization-server", discovery),
        Route("/oauth/jwks.json", jwks),
        Route("/oauth/token", token, methods=["POST"]),
        Route("/oauth/revoke", revoke, methods=["POST"]),
        Route("/oauth/authorize", authorize, methods=["GET"]),
    ]

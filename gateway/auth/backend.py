"""Who is calling and what they may do: a Starlette AuthenticationBackend and `requires`.

Credentials, in order: `Authorization: Bearer <JWT>` (Lookout's own, or the external OIDC
provider's), the session cookie of the web page, or a signed HLS URL (that one camera only; a recorded segment's: that object only).
A bad credential is a 401 with a short JSON body; none at all is anonymous, and `requires`
answers 401 (JSON) or, for a browser asking for a page, a redirect to /login.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.auth import http as h
from gateway.auth import scopes as sc
from gateway.auth.tokens import TokenError

if TYPE_CHECKING:
    from gateway.auth.bootstrap import AuthContext

_HLS_PATH_RE = re.compile(r"^/hls/([a-z0-9][a-z0-9_-]{0,62})/[^/]+$")
_RECORDING_PATH_RE = re.compile(
    r"^/api/cameras/([a-z0-9][a-z0-9_-]{0,62})/recordings/((?:[a-z0-9][a-z0-9_-]{0,62})/.+)$"
)
CLIENT_AUTH_PATHS = ("/oauth/token", "/oauth/revoke")
LOOPBACK_CLIENTS = ("127.0.0.1", "::1", "localhost")


class LookoutUser(BaseUser):
    """An authenticated caller: a user, a client (machine), or the holder of a signed URL."""

    def __init__(self, name: str, kind: str, via: str, scopes: frozenset[str]):
        self.name, self.kind, self.via, self.scopes = name, kind, via, scopes

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    def may(self, scope: str) -> bool:
        return sc.grants(self.scopes, scope)

    def to_dict(self) -> dict:
        cams = sc.cameras_of(self.scopes)
        return {
            "name": self.name,
            "kind": self.kind,
            "via": self.via,
            "scopes": sorted(self.scopes),
            "cameras": "*" if cams is None else sorted(cams),
        }


class InvalidCredentials(AuthenticationError):
    """A credential was presented and is not valid (answered 401)."""


class ForbiddenClient(AuthenticationError):
    """The caller may not use this gateway at all (answered 403)."""


class LookoutAuthBackend(AuthenticationBackend):
    """Authenticates each request from a bearer token, the session cookie or an HLS signature."""

    def __init__(self, auth: "AuthContext"):
        self.auth = auth

    async def authenticate(self, conn: HTTPConnection):
        auth = self.auth
        if auth.cfg.mode == "none":
            host = conn.client.host if conn.client else ""
            if host not in LOOPBACK_CLIENTS and not host.startswith("127."):
                raise ForbiddenClient("auth mode 'none' serves loopback clients only")
            scopes = frozenset({sc.ADMIN, sc.DETECTIONS_READ, sc.ALL_CAMERAS})
            return AuthCredentials(sorted(scopes)), LookoutUser("local", "anonymous", "none", scopes)
        if conn.url.path in CLIENT_AUTH_PATHS:
            return None  # these authenticate OAuth clients themselves (HTTP Basic or form)
        header = conn.headers.get("authorization")
        if header is not None:
            kind, _, token = header.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise InvalidCredentials("Authorization must be 'Bearer <access token>'")
            return self._credentials(*await self._bearer(token.strip()))
        sid = conn.cookies.get(auth.session_cookie)
        if sid:
            found = auth.web_session(sid)
            if found is not None:
                return self._credentials(*found)
            # A stale cookie is not an error: the caller is simply not logged in.
        m = _HLS_PATH_RE.match(conn.url.path)
        if m and "sig" in conn.query_params:
            cid = m.group(1)
            assert auth.hls is not None  # set by bootstrap whenever auth is on (mode none returned above)
            if not auth.hls.verify(cid, conn.query_params.get("exp"), conn.query_params.get("sig")):
                raise InvalidCredentials("bad or expired HLS URL signature")
            return self._credentials("signed-url", "signed-url", "hls-signature", frozenset({sc.camera_scope(cid)}))
        m = _RECORDING_PATH_RE.match(conn.url.path)
        if m and "sig" in conn.query_params:  # a VOD playlist's segment: signed for that one object
            cid, key = m.groups()
            assert auth.hls is not None  # set by bootstrap whenever auth is on (mode none returned above)
            if not key.startswith(cid + "/") or not auth.hls.verify_recording(
                key, conn.query_params.get("exp"), conn.query_params.get("sig")
            ):
                raise InvalidCredentials("bad or expired recording URL signature")
            return self._credentials("signed-url", "signed-url", "hls-signature", frozenset({sc.camera_scope(cid)}))
        return None

    async def _bearer(self, token: str) -> tuple[str, str, str, frozenset[str]]:
        auth = self.auth
        try:
            if auth.oidc is not None and auth.oidc.owns(token):
                name, scopes = await auth.oidc.verify_access_token(token)
                return name, "user", "oidc-bearer", scopes
            assert auth.tokens is not None  # set by bootstrap whenever auth is on
            claims = auth.tokens.verify(token)
        except TokenError as exc:
            raise InvalidCredentials(str(exc)) from None
        scopes = frozenset(s for s in claims["scope"].split() if _known(s))
        kind = "client" if claims["sub"] == claims.get("client_id") else "user"
        return claims["sub"], kind, "bearer", scopes

    @staticmethod
    def _credentials(name: str, kind: str, via: str, scopes: frozenset[str]):
        return AuthCredentials(["authenticated", *sorted(scopes)]), LookoutUser(name, kind, via, scopes)


def _known(scope: str) -> bool:
    try:
        sc.check_scope(scope)
        return True
    except ValueError:
        return False


def on_auth_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    """401 (bad credential) or 403 (caller refused), as short JSON; never a stack trace."""
    if isinstance(exc, ForbiddenClient):
        return JSONResponse({"error": "forbidden", "detail": str(exc)}, status_code=403)
    detail = str(exc)[:200]
    quoted = detail.replace('"', "'").encode("ascii", "replace").decode()
    return JSONResponse(
        {"error": "invalid_token", "detail": detail},
        status_code=401,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{quoted}"'},
    )


def current_user(request: HTTPConnection) -> LookoutUser | None:
    user = request.scope.get("user")
    return user if isinstance(user, LookoutUser) else None


def can_view(request: HTTPConnection, camera_id: str) -> bool:
    """True when the caller may watch `camera_id`."""
    user = current_user(request)
    return user is not None and user.may(sc.camera_scope(camera_id))


def unauthenticated(request: HTTPConnection, page: bool = False) -> Response:
    """401 JSON, or for a browser asking for a page, a redirect to the login page."""
    if page or h.wants_html(request):
        here = request.url.path + ("?" + request.url.query if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=302)
    return JSONResponse(
        {"error": "unauthorized", "detail": "log in, or send 'Authorization: Bearer <token>'"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="lookout"'},
    )


def forbidden(needs: str) -> JSONResponse:
    return JSONResponse({"error": "forbidden", "needs": needs}, status_code=403)


def check(request: HTTPConnection, scopes: tuple[str, ...], camera_param: str | None, page: bool) -> Response | None:
    """None when the caller has every scope (and may view the camera in `camera_param`), else the refusal."""
    user = current_user(request)
    if user is None:
        return unauthenticated(request, page)
    for scope in scopes:
        if not user.may(scope):
            return forbidden(scope)
    if camera_param is not None:
        cid = request.path_params.get(camera_param, "")
        if not user.may(sc.camera_scope(cid)):
            return forbidden(sc.camera_scope(cid) if len(cid) <= 64 else "camera:<id>:view")
    return None


def requires(*scopes: str, camera_param: str | None = None, page: bool = False):
    """Decorate an endpoint: it runs only for callers with `scopes` (and view rights on the camera
    named by the path parameter `camera_param`); others get 401/403 JSON or the login redirect."""

    def decorate(endpoint):
        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def wrapper(request: Request):
                return check(request, scopes, camera_param, page) or await endpoint(request)
        else:

            @functools.wraps(endpoint)
            def wrapper(request: Request):
                return check(request, scopes, camera_param, page) or endpoint(request)

        return wrapper

    return decorate


class RequireAuthASGI:
    """Wraps an ASGI app (static files): paths in `public` are open, the rest need a login."""

    def __init__(self, app, public: tuple[str, ...]):
        self.app, self.public = app, public

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").rsplit("/static", 1)[-1] not in self.public:
            conn = HTTPConnection(scope)
            if current_user(conn) is None:
                return await unauthenticated(conn)(scope, receive, send)
        await self.app(scope, receive, send)


def me(request: Request) -> Response:
    """GET /auth/me: who is calling, how, and with which scopes."""
    user = current_user(request)
    if user is None:
        return unauthenticated(request)
    return JSONResponse(user.to_dict(), headers={"Cache-Control": "no-store"})

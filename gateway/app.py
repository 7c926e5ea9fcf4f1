"""The gateway's Starlette application: web page, HLS, and the HTTP API, behind the auth layer."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import hls_routes
from gateway.api import cameras, detections_stream
from gateway.api import events as events_api, history as history_api, metrics as metrics_api, openapi
from gateway.api import motion as motion_api
from gateway.api import recordings as recordings_api
from gateway.auth import links, login, server
from gateway.auth.backend import LookoutAuthBackend, RequireAuthASGI, me, on_auth_error, requires
from gateway.auth.http import BodyLimitMiddleware, ForwardedMiddleware, TrustedProxies
from gateway.auth.scopes import ADMIN, DETECTIONS_READ
from gateway.context import GatewayContext
from gateway.limits import REDIS_UNAVAILABLE, CallerRequestLimit, store_unavailable
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
PUBLIC_STATIC = ("/style.css",)
# Every HTML response: no framing (clickjacking), scripts only from this origin; hls.js plays from
# blob: URLs (MSE) and runs its worker from one; events.js adds its own <style>.
HTML_SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

# What each API/HLS route needs: (scopes, path parameter naming the camera). Routes not listed
# here need `admin`, so a route added later is closed until someone opens it on purpose.
ROUTE_POLICY: dict[str, tuple[tuple[str, ...], str | None]] = {
    "/api/cameras": ((), None),  # the list itself shows only the cameras the caller may view
    "/api/cameras/{camera_id}": ((), "camera_id"),
    "/api/cameras/{camera_id}/detections/latest": ((DETECTIONS_READ,), "camera_id"),
    "/api/detections/stream": ((DETECTIONS_READ,), None),  # the stream carries only cameras the caller may view
    "/api/cameras/{camera_id}/history": ((DETECTIONS_READ,), "camera_id"),
    "/api/cameras/{camera_id}/counts": ((DETECTIONS_READ,), "camera_id"),
    "/api/cameras/{camera_id}/frame.jpg": ((DETECTIONS_READ,), "camera_id"),
    "/api/cameras/{camera_id}/export.mp4": ((DETECTIONS_READ,), "camera_id"),
    "/api/cameras/{camera_id}/recordings": ((), "camera_id"),  # recorded video: like live HLS, camera view
    "/api/cameras/{camera_id}/vod.m3u8": ((), "camera_id"),
    "/api/cameras/{camera_id}/motion": ((), "camera_id"),  # the timeline's motion: camera view, as recordings
    "/api/cameras/{camera_id}/recordings/{key:path}": ((), "camera_id"),  # or a signed URL of that object
    "/api/detect": ((DETECTIONS_READ,), None),
    "/api/events": ((DETECTIONS_READ,), None),  # lists only events of cameras the caller may view
    "/api/events/stream": ((DETECTIONS_READ,), None),  # carries only cameras the caller may view
    "/api/events/{event_id}": ((DETECTIONS_READ,), None),  # the endpoint checks the event's camera
    "/api/events/{event_id}/snapshot.jpg": ((DETECTIONS_READ,), None),
    "/api/events/{event_id}/clip.mp4": ((DETECTIONS_READ,), None),
    "/api/openapi.json": ((), None),
    "/hls/{camera_id}/index.m3u8": ((), "camera_id"),
    "/hls/{camera_id}/{name}": ((), "camera_id"),
}


def _guard(route: Route, ctx: GatewayContext) -> Route:
    """The route with its ROUTE_POLICY enforced (and HLS responses made private/signed)."""
    needs, camera_param = ROUTE_POLICY.get(route.path, ((ADMIN,), None))
    endpoint = route.endpoint
    if route.path.startswith("/hls/"):
        endpoint = _private_hls(endpoint, ctx, playlist=route.path.endswith("index.m3u8"))
    return Route(
        route.path, requires(*needs, camera_param=camera_param)(endpoint), methods=route.methods, name=route.name
    )


def _private_hls(endpoint, ctx: GatewayContext, playlist: bool):
    """Playlists get signed segment URIs; nothing of a camera is cacheable by shared caches."""

    def finish(request: Request, resp: Response) -> Response:
        if resp.status_code != 200:
            return resp
        if playlist:
            text = bytes(resp.body).decode()
            if ctx.auth is not None and ctx.auth.hls is not None:
                text = ctx.auth.hls.rewrite_playlist(text, request.path_params["camera_id"])
            return Response(text, media_type=resp.media_type, headers={"Cache-Control": "private, no-cache"})
        resp.headers["Cache-Control"] = "private, max-age=60, immutable"
        return resp

    if inspect.iscoroutinefunction(endpoint):  # the playlist route waits (LL-HLS blocking reload) without a thread

        async def async_wrapper(request: Request) -> Response:
            return finish(request, await endpoint(request))

        return async_wrapper

    def wrapper(request: Request) -> Response:
        return finish(request, endpoint(request))

    return wrapper


class HtmlSecurityHeaders:
    """Adds HTML_SECURITY_HEADERS to every text/html response, whichever route made it."""

    def __init__(self, app):
        self.app = app
        self.extra = [(k.lower().encode(), v.encode()) for k, v in HTML_SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if ctype.lower().startswith(b"text/html"):
                    have = {k.lower() for k, _ in headers}
                    message = {**message, "headers": headers + [h for h in self.extra if h[0] not in have]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(ctx: GatewayContext) -> Starlette:
    auth = ctx.auth
    if auth is None:
        from gateway.auth.bootstrap import bootstrap

        auth = ctx.auth = bootstrap(ctx.args)

    def healthz(request: Request) -> JSONResponse:
        try:
            ctx.redis.ping()
        except Exception as exc:  # any Redis failure means unhealthy
            return JSONResponse({"status": "unhealthy", "redis": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    def favicon(request: Request) -> FileResponse:
        # Public: browsers ask for it on the login page too, without credentials.
        return FileResponse(
            WEB_DIR / "static" / "favicon.ico",
            media_type="image/x-icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @requires(page=True)
    def index(request: Request) -> FileResponse:
        # no-store: Chromium's back/forward cache would otherwise restore the page (live and review) stale
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-store"})

    public_url = ctx.args.gateway.public_url.rstrip("/")

    async def not_found(request: Request, exc: Exception) -> Response:
        # The trailing-slash redirect (Starlette's own is off: it echoes the request's Host header).
        path = request.url.path
        alt = path.rstrip("/") if path.endswith("/") else path + "/"
        if (
            request.method in ("GET", "HEAD")
            and alt
            and alt != path
            and any(
                isinstance(r, Route) and r.matches({**request.scope, "path": alt})[0] == Match.FULL
                for r in app.router.routes
            )
        ):
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(public_url + alt + query, status_code=307)
        return JSONResponse({"error": "not found", "path": path[:200]}, status_code=404)

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "method not allowed", "method": request.method}, status_code=405)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error serving %s", request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)

    auth_routes = []
    if auth.cfg.mode != "none":
        auth_routes = [*server.make_routes(auth), *login.make_routes(auth), *links.make_routes(auth)]
        if auth.oidc is not None:
            auth_routes += auth.oidc.make_routes()
    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Route("/auth/me", me),
        *auth_routes,
        *(
            _guard(r, ctx)
            for r in [
                *cameras.make_routes(ctx),
                *detections_stream.make_routes(ctx),
                *hls_routes.make_routes(ctx),
                *history_api.make_routes(ctx),
                *events_api.make_routes(ctx),
                *openapi.make_routes(ctx),
                *motion_api.make_routes(ctx),
                *metrics_api.make_routes(ctx),
                *recordings_api.make_routes(ctx),
            ]
        ),
        Mount("/static", app=RequireAuthASGI(StaticFiles(directory=WEB_DIR / "static"), PUBLIC_STATIC), name="static"),
    ]
    middleware = [
        Middleware(ForwardedMiddleware, trusted=TrustedProxies(ctx.args.gateway.trusted_proxies)),
        Middleware(HtmlSecurityHeaders),
        Middleware(metrics_api.AuthFailureCounter, metrics=Metrics(ctx.redis)),
        Middleware(
            BodyLimitMiddleware,
            max_bytes=auth.cfg.max_body_bytes,
            path_limits={"/api/detect": ctx.args.gateway.upload_max_bytes},
        ),
        Middleware(AuthenticationMiddleware, backend=LookoutAuthBackend(auth), on_error=on_auth_error),
        Middleware(CallerRequestLimit, max_per_caller=ctx.args.gateway.max_requests_per_caller),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            404: not_found,
            405: method_not_allowed,
            500: server_error,
            **{e: store_unavailable for e in REDIS_UNAVAILABLE},
        },
    )
    app.router.redirect_slashes = False
    return app

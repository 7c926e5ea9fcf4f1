"""The gateway's Starlette application: web page, HLS, and the HTTP API."""
from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import hls_routes
from gateway.api import cameras
from gateway.context import GatewayContext

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"


def create_app(ctx: GatewayContext) -> Starlette:
    def healthz(request: Request) -> JSONResponse:
        try:
            ctx.redis.ping()
        except Exception as exc:  # any Redis failure means unhealthy
            return JSONResponse({"status": "unhealthy", "redis": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    def index(request: Request) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "not found", "path": request.url.path}, status_code=404)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error serving %s", request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        *cameras.make_routes(ctx),
        *hls_routes.make_routes(ctx),
        Mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 500: server_error})

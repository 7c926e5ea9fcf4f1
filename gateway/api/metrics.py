"""`GET /metrics`: the whole cluster's metrics in Prometheus' text format (admin scope)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.context import GatewayContext
from pipeline.metrics import render

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def make_routes(ctx: GatewayContext) -> list[Route]:
    def metrics(request: Request) -> Response:
        used = float(ctx.redis.info("memory")["used_memory"])
        text = render(ctx.redis, extra_gauges=[("lookout_redis_used_memory_bytes", {}, used)])
        return Response(text, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return [Route("/metrics", metrics)]


class AuthFailureCounter:
    """ASGI middleware: counts 401 and 403 answers in `lookout_auth_failures_total{status}`."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                self.metrics.inc("lookout_auth_failures_total", status=str(message["status"]))
            await send(message)

        return await self.app(scope, receive, counting_send)

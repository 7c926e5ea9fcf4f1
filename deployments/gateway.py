"""The gateway deployment: Serve's HTTP ingress, a thin wrapper around gateway.app."""
from __future__ import annotations

import logging

from ray import serve

from deployments.common import setup_logging
from gateway.app import create_app
from gateway.context import GatewayContext
from pipeline.config import PipelineArgs

log = logging.getLogger(__name__)


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0.05})
@serve.ingress()
class GatewayDeployment:
    """Serves the web page, HLS and the API. Holds the other stages' handles so Serve deploys them."""

    def __init__(self, args: PipelineArgs, *stages):
        setup_logging()
        self.args = args
        self.stages = stages
        self.ctx = GatewayContext.from_args(args)
        self.ctx.stages = {h.deployment_name: h for h in stages if hasattr(h, "deployment_name")}
        base = args.gateway.public_url.rstrip("/")
        log.info("Lookout is up: watch at %s/ ; API at %s/api/cameras", base, base)
        for cam in args.cameras:
            log.info("camera %s: HLS stream at %s/hls/%s/index.m3u8", cam.id, base, cam.id)

    def __serve_build_asgi_app__(self):
        return create_app(self.ctx)

    def check_health(self) -> None:
        self.ctx.redis.ping()

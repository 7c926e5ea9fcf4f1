"""The gateway deployment: Serve's HTTP ingress, a thin wrapper around gateway.app."""

from __future__ import annotations

import logging
import threading
import time

from ray import serve

from deployments.common import setup_logging
from gateway.app import create_app
from gateway.context import GatewayContext
from pipeline.config import PipelineArgs

log = logging.getLogger(__name__)
ANNOUNCE_WAIT_S = 900.0


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
        threading.Thread(target=self._announce_when_up, name="announce", daemon=True).start()

    def _announce_when_up(self) -> None:
        """Print the links once a request would succeed: when Serve reports the whole app RUNNING (every
        replica constructed, the detector's model loaded), not when this replica's constructor ran."""
        from ray import serve

        app = serve.get_replica_context().app_name
        deadline = time.monotonic() + ANNOUNCE_WAIT_S
        while time.monotonic() < deadline:
            try:
                status = serve.status().applications.get(app)
                if status is not None and status.status == "RUNNING":
                    break
            except Exception as exc:  # noqa: BLE001 - the controller may be busy; ask again
                log.debug("app status not known yet: %r", exc)
            time.sleep(0.25)
        else:
            log.warning(
                "Lookout is not up after %.0fs: see the log above for the stage that did not start", ANNOUNCE_WAIT_S
            )
            return
        base = self.args.gateway.public_url.rstrip("/")
        log.info("Lookout is up: watch at %s/ ; API at %s/api/cameras", base, base)
        for cam in self.args.cameras:
            log.info("camera %s: HLS stream at %s/hls/%s/index.m3u8", cam.id, base, cam.id)

    def __serve_build_asgi_app__(self):
        return create_app(self.ctx)

    def check_health(self) -> None:
        self.ctx.redis.ping()

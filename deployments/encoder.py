"""One encoder deployment per camera: the Serve adapter of hls.encoder_service.EncoderService."""

from __future__ import annotations

from ray import serve

from deployments.common import redis_client, setup_logging
from hls.encoder_service import EncoderService
from pipeline.config import CameraStageArgs


@serve.deployment(name="encoder", ray_actor_options={"num_cpus": 0.01}, health_check_period_s=10)
class EncoderDeployment:
    """Wires one camera's encoder service to its Redis and Serve's health checks."""

    def __init__(self, args: CameraStageArgs, camera_id: str):
        setup_logging()
        self.service = EncoderService(args, camera_id, redis_client(args))

    def check_health(self) -> None:
        self.service.check_health()

    def stats(self) -> dict:
        return self.service.stats()

    def __del__(self) -> None:
        if getattr(self, "service", None) is not None:
            self.service.close()

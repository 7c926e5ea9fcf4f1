"""`build_app(args)`: what serve_config.yaml imports (`deployments.app:build_app`)."""
from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.detector import DetectorDeployment
from deployments.encoder import EncoderDeployment
from deployments.gateway import GatewayDeployment
from deployments.ingest import IngestDeployment
from pipeline.config import PipelineArgs, parse_args

log = logging.getLogger(__name__)


def build_app(args: dict[str, Any] | PipelineArgs) -> Application:
    """Validate the args and wire one ingest and one encoder per camera, a shared detector and the gateway."""
    cfg = parse_args(args)
    det = cfg.detector
    detector = DetectorDeployment.options(
        num_replicas=det.num_replicas,
        ray_actor_options={"num_cpus": det.num_cpus, "num_gpus": det.num_gpus},
        user_config={"max_batch_size": det.max_batch_size, "batch_wait_timeout_s": det.batch_wait_timeout_s},
    ).bind(cfg)
    stages = []
    for cam in cfg.cameras:
        if not cam.enabled:
            continue
        stages.append(IngestDeployment.options(name=f"ingest-{cam.id}").bind(cfg, cam.id, detector))
        if cfg.hls.enabled:
            stages.append(EncoderDeployment.options(name=f"encoder-{cam.id}").bind(cfg, cam.id))
    return GatewayDeployment.bind(cfg, detector, *stages)

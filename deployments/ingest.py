"""One ingest deployment per camera (the legacy "annotate" path): source -> Redis frame bus -> detector."""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import node_id, redis_client, setup_logging
from pipeline.camera_service import CameraService
from pipeline.config import CameraStageArgs
from pipeline.types import FrameRef

log = logging.getLogger(__name__)


@serve.deployment(name="ingest", ray_actor_options={"num_cpus": 0.01}, health_check_period_s=5)
class IngestDeployment:
    """Reads one camera in a thread (pipeline.camera_service.CameraService), puts full frames on the bus
    for the encoder, and asks the detector about them. Standby replicas wait for the camera's lease."""

    def __init__(self, args: CameraStageArgs, camera_id: str, detector: DeploymentHandle | None):
        setup_logging()
        self.args = args
        self.cam = args.camera
        if detector is not None and args.detector.prefer_local:
            detector._init(_prefer_local_routing=True)  # fill batches on this node before crossing the network
        self.detector = detector
        self.service = CameraService(
            self.cam,
            redis_client(args),
            args.bus,
            args.detector,
            self._detect if detector is not None else None,
            node_id=node_id(),
        )
        self.service.start()

    def _detect(self, ref: FrameRef) -> None:
        if self.detector is None:  # only handed to the service with a detector
            raise RuntimeError("no detector")
        self.detector.detect.remote(ref).result(timeout_s=30)

    def check_health(self) -> None:
        problem = self.service.problem()
        if problem:
            raise RuntimeError(problem)

    def status(self) -> dict:
        return self.service.status()

    def __del__(self) -> None:
        if hasattr(self, "service"):  # __init__ may have failed before it existed
            self.service.stop(join_timeout_s=0)

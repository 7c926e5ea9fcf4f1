"""Camera workers' Serve adapter: one replica runs one hls.camera_group.CameraGroup.

Health: a camera whose source fails is a status, never a replica restart; the group restarts a broken
camera in place, and the replica fails its health check only when no camera of it can be brought back.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import node_id, redis_client, setup_logging
from hls.camera_group import CameraGroup
from pipeline.config import CameraGroupArgs
from pipeline.types import FrameRef


@serve.deployment(name="cameras", ray_actor_options={"num_cpus": 0.01}, health_check_period_s=5)
class CameraWorkerDeployment:
    """Wires a camera group to its Redis, the detector's handle and Serve's health checks."""

    def __init__(self, args: CameraGroupArgs, detector: DeploymentHandle | None):
        setup_logging()
        if detector is not None and args.detector.prefer_local:
            detector._init(_prefer_local_routing=True)  # fill batches on this node before crossing the network
        self.detector = detector
        self.group = CameraGroup(args, redis_client(args), self._detect if detector is not None else None, node_id())

    def _detect(self, ref: FrameRef) -> int:
        """The frame's number of objects (negative: the detector skipped it as stale or gone)."""
        if self.detector is None:  # only handed to the group with a detector
            raise RuntimeError("no detector")
        return self.detector.detect.remote(ref).result(timeout_s=30)

    def check_health(self) -> None:
        self.group.check()

    def status(self) -> list[dict]:
        return self.group.status()

    def __del__(self) -> None:
        if getattr(self, "group", None) is not None:
            self.group.close()

"""Small helpers shared by the deployments."""

from __future__ import annotations

import logging
import os
import time

import redis

from pipeline import redisconn
from pipeline.config import CameraGroupArgs, CameraStageArgs, DetectorStageArgs, EventsStageArgs, PipelineArgs
from pipeline.logutil import STAGES, configure_logging


def redis_client(
    args: PipelineArgs | CameraStageArgs | CameraGroupArgs | DetectorStageArgs | EventsStageArgs,
) -> redis.Redis:
    return redisconn.connect(
        args.resolved_redis_url,
        args.bus.redis_max_connections,
        args.bus.redis_pool_timeout_s,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def replica_stage() -> tuple[str | None, str | None]:
    """(stage, camera) of the Serve replica this runs in, from its deployment name ("ingest-door"), else Nones."""
    try:
        from ray import serve

        name = serve.get_replica_context().deployment
    except Exception:  # not inside a replica
        return None, None
    stage, _, camera = name.partition("-")
    return (stage, camera or None) if stage in STAGES else (None, None)


class QueueProbeNoise(logging.Filter):
    """Serve's request router asks each replica for its queue length with a 0.1 s deadline
    (RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S) and warns at every miss, though it then retries with a
    longer deadline (up to 1 s) and routes the request. On a busy CPU box (the detector's replica, a
    starting or stopping one) that is a WARNING every few requests. The first goes through, then one
    per `every_s` with the count of those left out; nothing else of Serve's logger is touched."""

    NEEDLES = ("Failed to get queue length from", "Failed to fetch queue length for")

    def __init__(self, every_s: float = 600.0):
        super().__init__()
        self.every_s = every_s
        self._last = float("-inf")
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not any(n in msg for n in self.NEEDLES):
            return True
        now = time.monotonic()
        if now - self._last < self.every_s:
            self.dropped += 1
            return False
        if self.dropped:
            record.msg, record.args = f"{msg} ({self.dropped} more like it in the last {self.every_s:.0f}s)", None
            self.dropped = 0
        self._last = now
        return True


def setup_logging() -> None:
    """Root handler in $LOOKOUT_LOG_FORMAT (text or json), records tagged with this replica's stage and camera."""
    stage, camera = replica_stage()
    configure_logging(os.environ.get("LOOKOUT_LOG_FORMAT", "text"), stage=stage, camera=camera)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("hls").setLevel(logging.INFO)
    serve_log = logging.getLogger("ray.serve")  # the router of this replica's handles logs here
    if not any(isinstance(f, QueueProbeNoise) for f in serve_log.filters):
        serve_log.addFilter(QueueProbeNoise())


def node_id() -> str:
    """The Ray node this runs on ("local" outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():  # get_runtime_context() would start a local Ray
            return "local"
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests)
        return "local"

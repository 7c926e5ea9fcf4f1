"""Small helpers shared by the deployments."""
from __future__ import annotations

import logging
import os

import redis

from pipeline import redisconn
from pipeline.config import PipelineArgs
from pipeline.logutil import STAGES, configure_logging


def redis_client(args: PipelineArgs) -> redis.Redis:
    return redisconn.connect(args.resolved_redis_url, args.bus.redis_max_connections, args.bus.redis_pool_timeout_s,
                             socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


def replica_stage() -> tuple[str | None, str | None]:
    """(stage, camera) of the Serve replica this runs in, from its deployment name ("ingest-door"), else Nones."""
    try:
        from ray import serve

        name = serve.get_replica_context().deployment
    except Exception:  # not inside a replica
        return None, None
    stage, _, camera = name.partition("-")
    return (stage, camera or None) if stage in STAGES else (None, None)


def setup_logging() -> None:
    """Root handler in $LOOKOUT_LOG_FORMAT (text or json), records tagged with this replica's stage and camera."""
    stage, camera = replica_stage()
    configure_logging(os.environ.get("LOOKOUT_LOG_FORMAT", "text"), stage=stage, camera=camera)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("hls").setLevel(logging.INFO)

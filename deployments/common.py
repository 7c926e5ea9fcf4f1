"""Small helpers shared by the deployments."""
from __future__ import annotations

import logging

import redis

from pipeline.config import PipelineArgs


def redis_client(args: PipelineArgs) -> redis.Redis:
    return redis.Redis.from_url(args.resolved_redis_url, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("hls").setLevel(logging.INFO)

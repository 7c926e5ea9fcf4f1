"""What the gateway's endpoints need, built once per gateway process."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from pipeline import redisconn
from pipeline.bus import ResultStore, StatusStore
from pipeline.config import PipelineArgs


@dataclass
class GatewayContext:
    """Shared state of one gateway process: settings and Redis-backed stores."""

    args: PipelineArgs
    redis: redis.Redis
    statuses: StatusStore
    results: ResultStore
    hls_store: Any
    auth: Any = None  # gateway.auth.bootstrap.AuthContext
    stages: dict[str, Any] = field(default_factory=dict)  # deployment name -> handle (detector, events)

    @classmethod
    def from_args(cls, args: PipelineArgs) -> "GatewayContext":
        from gateway.auth.bootstrap import bootstrap
        from hls.store import make_store

        client = redisconn.connect(args.resolved_redis_url, socket_timeout=5, health_check_interval=30)
        return cls(
            args=args,
            redis=client,
            statuses=StatusStore(client),
            results=ResultStore(client),
            hls_store=make_store(args.hls, client, args.base_dir),
            auth=bootstrap(args),
        )

"""What the gateway's endpoints need, built once per gateway process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from gateway.limits import StreamLimiter
from pipeline import redisconn
from pipeline.bus import ResultStore, StatusStore
from pipeline.config import PipelineArgs

STREAM_BLOCK_S = 5.0  # how long an SSE stream's XREAD blocks (then a keep-alive)


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
    streams: StreamLimiter | None = None  # open SSE streams, per caller and in all
    _aclients: dict[int, aioredis.Redis] = field(default_factory=dict, repr=False)

    def aredis(self) -> aioredis.Redis:
        """The process's redis.asyncio client of the running event loop (one pool per loop, sized by
        `bus.redis_max_connections`), for the SSE streams' XREADs that block up to STREAM_BLOCK_S."""
        loop = id(asyncio.get_running_loop())
        if loop not in self._aclients:
            bus = self.args.bus
            self._aclients[loop] = redisconn.connect_async(  # socket timeout > the XREAD block (redis-py 8: 5 s)
                self.args.resolved_redis_url,
                bus.redis_max_connections,
                bus.redis_pool_timeout_s,
                health_check_interval=30,
                socket_timeout=STREAM_BLOCK_S + 10,
            )
        return self._aclients[loop]

    @classmethod
    def from_args(cls, args: PipelineArgs) -> "GatewayContext":
        from gateway.auth.bootstrap import bootstrap
        from hls.store import make_store

        client = redisconn.connect(
            args.resolved_redis_url,
            args.bus.redis_max_connections,
            args.bus.redis_pool_timeout_s,
            socket_timeout=5,
            health_check_interval=30,
        )
        return cls(
            args=args,
            redis=client,
            statuses=StatusStore(client),
            results=ResultStore(client),
            hls_store=make_store(args.hls, client, args.base_dir),
            auth=bootstrap(args),
            streams=StreamLimiter(args.gateway.max_streams, args.gateway.max_streams_per_caller),
        )
